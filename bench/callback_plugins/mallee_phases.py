"""An Ansible callback for bench/install.py: how long each phase of a run took.

A phase is a play of install.yml, and within the play that installs the hosts, each
role (common, vde, nc, cc, clc) from its first task to the next role's: the hosts run
in parallel, so a phase ends when its last host is done. Enabled only by the benchmark
(ANSIBLE_CALLBACK_PLUGINS, ANSIBLE_CALLBACKS_ENABLED); it writes the phases as JSON to
the file named by MALLEE_PHASES_FILE.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "mallee_phases"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.phases: list[list[Any]] = []  # [name, start, end]
        self.play = ""

    def _enter(self, name: str) -> None:
        now = time.monotonic()
        if self.phases and self.phases[-1][0] == name:
            return
        if self.phases:
            self.phases[-1][2] = now
        self.phases.append([name, now, now])

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self.play = play.get_name()
        self._enter(self.play)

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        role = task._role.get_name() if task._role else ""
        self._enter(f"{self.play}: {role}" if role else self.play)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        if self.phases:
            self.phases[-1][2] = time.monotonic()
        with open(os.environ["MALLEE_PHASES_FILE"], "w") as f:
            json.dump([(name, end - start) for name, start, end in self.phases], f)
