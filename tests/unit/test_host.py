"""host.run: the node's programs, bounded in time, their failures told without host paths."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from mallee.common import host, log
from mallee.common.errors import HostCommandFailed

SECRET_PATH = "/var/lib/mallee/nc/images/sha256-feed.part"


@pytest.fixture
def request_id() -> Iterator[str]:
    token = log.current_request_id.set("req-00000000deadbeef")
    yield "req-00000000deadbeef"
    log.current_request_id.reset(token)


def test_success_returns_stdout_and_logs_the_command(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mallee.common.host")
    assert host.run("sh", "-c", 'printf "%s" "$1"', "sh", "a b") == "a b"
    assert "ran sh -c" in caplog.text


def test_failure_keeps_paths_and_stderr_out_of_the_message(
    request_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    script = f'echo "cannot open {SECRET_PATH}" >&2; exit 3'
    with pytest.raises(HostCommandFailed) as caught:
        host.run("/bin/sh", "-c", script)
    error = caught.value
    assert error.status == 500
    assert error.message == (
        "sh failed on this node (exit status 3); the node's log has the details, "
        f"under request {request_id}"
    )
    assert error.command == ("/bin/sh", "-c", script)
    assert error.stderr == f"cannot open {SECRET_PATH}"
    assert SECRET_PATH in caplog.text  # the admin finds the details in the log


def test_a_program_that_does_not_exist_fails_the_same_way() -> None:
    with pytest.raises(HostCommandFailed, match=r"^mallee-no-such-program failed on this node"):
        host.run("mallee-no-such-program")


def test_timeout_kills_the_program_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    with pytest.raises(HostCommandFailed) as caught:
        host.run("sh", "-c", "echo stuck on a lock >&2; exec sleep 30", timeout_s=0.5)
    assert time.monotonic() - started < 10
    assert caught.value.message.startswith("sh failed on this node (timed out after 0.5 s)")
    assert caught.value.message.endswith("the node's log has the details")  # no request: "-"
    assert "stuck on a lock" in caplog.text
