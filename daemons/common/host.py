"""Running the host's own programs (qemu-img, mkfs, nft).

One place bounds their time, logs each with the request id it serves, and turns a failure
into ``HostCommandFailed``: the caller's answer names the program only, while the command
line and its stderr, which name host paths (cache files, instance folders), go to the
node's log under the same request id.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from pathlib import PurePath

from mallee.common import log
from mallee.common.errors import HostCommandFailed

logger = logging.getLogger(__name__)

# Generous for what these programs do (qemu-img info on a crafted image, mkfs of a 64 TiB
# sparse file takes well under a second); past it a program is stuck, not slow.
DEFAULT_TIMEOUT_S = 60.0


def run(*argv: str, timeout_s: float = DEFAULT_TIMEOUT_S, stdin: str | None = None) -> str:
    """Run ``argv`` (no shell; ``stdin`` as its input, else none) and return its stdout;
    raise HostCommandFailed if it cannot start, exits non-zero, or is still running after
    ``timeout_s`` (it is then killed)."""
    command = shlex.join(argv)
    started = time.monotonic()
    try:
        result = subprocess.run(
            argv,
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise _failed(argv, f"timed out after {timeout_s:g} s", _text(e.stderr), None) from None
    except OSError as e:
        raise _failed(argv, "could not be started", str(e), None) from None
    if result.returncode != 0:
        raise _failed(argv, f"exit status {result.returncode}", result.stderr, result.returncode)
    logger.info("ran %s (%.2f s)", command, time.monotonic() - started)
    return result.stdout


def _failed(
    argv: tuple[str, ...], reason: str, stderr: str, exit_status: int | None
) -> HostCommandFailed:
    stderr = stderr.strip()
    logger.warning("%s failed (%s); stderr: %s", shlex.join(argv), reason, stderr or "(empty)")
    request_id = log.current_request_id.get()
    where = "" if request_id == "-" else f", under request {request_id}"
    program = PurePath(argv[0]).name
    return HostCommandFailed(
        f"{program} failed on this node ({reason}); the node's log has the details{where}",
        argv,
        stderr,
        exit_status,
    )


def _text(output: str | bytes | None) -> str:
    """Partial output a timeout kept; bytes, since it is not decoded at that point."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
