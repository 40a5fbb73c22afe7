"""The aws CLIs, unmodified: Debian's v2 (/usr/bin/aws) and PyPI's v1 (in its own
virtual environment, made by tools/prepare-host)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.support.daemons import REPO

CLIS = {
    "v2": Path("/usr/bin/aws"),  # Debian's awscli
    "v1": REPO / ".venv-awscli1" / "bin" / "aws",  # PyPI's awscli 1.x
}


class Aws:
    """One aws CLI with a user's credentials bundle, as `mallee-admin` writes it."""

    def __init__(self, program: Path, bundle: Path, url: str) -> None:
        if not program.exists():
            raise FileNotFoundError(f"{program}: run tools/prepare-host")
        self.program = program
        self.url = url
        keys = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (bundle / "mallee.rc").read_text().splitlines()
            if line.startswith("export ")
        )
        self.env = {"PATH": os.environ["PATH"], "HOME": str(bundle), **keys}

    def __call__(self, *args: str) -> Any:
        command = [str(self.program), "--endpoint-url", self.url, "--output", "json", "ec2", *args]
        done = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=900, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"aws ec2 {' '.join(args)}: {done.stderr.strip()}")
        return json.loads(done.stdout) if done.stdout.strip() else None
