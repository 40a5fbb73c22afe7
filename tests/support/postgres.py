"""A throwaway PostgreSQL server for a test session, from Debian's binaries.

The CLC must work on PostgreSQL as well as on SQLite, and only a real server shows what
differs (locking, transaction isolation, what text a column takes). Each session starts
its own server rather than relying on one the host may run: in a fresh 0700 folder
under /var/tmp owned by the ``postgres`` user (initdb and the server refuse to run as
root, and cannot enter pytest's folders, which are root's), listening on 127.0.0.1 and
on a socket in that folder only, with a password for the test role. It is stopped and
its folder removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from tests.support.daemons import free_port

VERSIONS = Path("/usr/lib/postgresql")  # Debian keeps each major version's binaries apart
SYSTEM_USER = "postgres"  # made by Debian's package; the server runs as this user
ROLE = "mallee"  # the superuser initdb makes (tests create databases), and its database
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def binaries() -> Path:
    """The bin folder of the newest PostgreSQL installed."""
    found = [p.parent for p in VERSIONS.glob("*/bin/initdb") if p.parent.parent.name.isdigit()]
    if not found:
        raise RuntimeError(
            f"no PostgreSQL server binaries in {VERSIONS}/*/bin: run tools/prepare-host"
        )
    return max(found, key=lambda p: int(p.parent.name))


@dataclass(frozen=True)
class PostgresServer:
    """A running server: where it is, and how to reach it."""

    bin_dir: Path
    folder: Path  # the data folder, the socket and the log are in here
    port: int
    password: str

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def url(self, database: str = ROLE) -> str:
        """The SQLAlchemy URL of ``database`` on this server, over TCP with the password."""
        return f"postgresql+psycopg://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (by default of a unique name); its URL. One per test
        keeps tests from seeing each other's records while they share the server."""
        name = name or f"t_{secrets.token_hex(6)}"
        dsn = f"host=127.0.0.1 port={self.port} user={ROLE} password={self.password}"
        # the maintenance database initdb makes; CREATE DATABASE runs outside a transaction
        with psycopg.connect(dsn, dbname="postgres", autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)


def _as_postgres(args: Sequence[str | Path]) -> list[str]:
    """A command line that runs a server binary as the postgres user."""
    return ["runuser", "-u", SYSTEM_USER, "--", *map(str, args)]


def _run(args: Sequence[str | Path], cwd: Path, timeout_s: float) -> None:
    """Run a server binary as the postgres user; its output in the error if it fails."""
    done = subprocess.run(
        _as_postgres(args),
        cwd=cwd,  # root's working folder may be closed to postgres
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} failed:\n{done.stdout}{done.stderr}")


def _wait_ready(server: PostgresServer, process: subprocess.Popen[bytes]) -> None:
    """Back once the server accepts connections; an error with its log if it dies or
    is not ready within START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    ready: list[str | Path] = [server.bin_dir / "pg_isready", "--quiet", "--host", "127.0.0.1"]
    ready += ["--port", str(server.port), "--timeout", "1"]
    while subprocess.run(ready, check=False, timeout=10).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            state = "exited" if process.poll() is not None else "not ready in time"
            raise RuntimeError(f"PostgreSQL {state}; its log:\n{server.log.read_text()}")
        time.sleep(0.1)  # between attempts only: refused connections answer at once


def _stop(server: PostgresServer, process: subprocess.Popen[bytes]) -> None:
    """pg_ctl's fast shutdown (the sessions' transactions are thrown away, as is the
    whole server); SIGKILL to the server's process group if that fails."""
    if process.poll() is None:
        stop: list[str | Path] = [server.bin_dir / "pg_ctl", "stop", "--mode", "fast"]
        stop += ["--pgdata", server.data]
        try:
            _run([*stop, "--wait", "--timeout", str(STOP_TIMEOUT_S)], server.folder, 60)
            process.wait(STOP_TIMEOUT_S)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # runuser and the server: its own group
                process.wait()


@contextmanager
def running() -> Iterator[PostgresServer]:
    """A new server for as long as the block runs; stopped and removed after it."""
    bin_dir = binaries()
    try:
        user = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise RuntimeError(f"no {SYSTEM_USER} user: run tools/prepare-host") from None
    folder = Path(tempfile.mkdtemp(prefix="mallee-pg-", dir="/var/tmp"))  # 0700
    try:
        os.chown(folder, user.pw_uid, user.pw_gid)
        server = PostgresServer(bin_dir, folder, free_port(), secrets.token_hex(16))
        password_file = folder / "password"
        password_file.write_text(server.password + "\n")
        os.chown(password_file, user.pw_uid, user.pw_gid)
        initdb: list[str | Path] = [bin_dir / "initdb", "--pgdata", server.data, "--username", ROLE]
        initdb += ["--pwfile", password_file, "--auth", "scram-sha-256"]
        initdb += ["--encoding", "UTF8", "--locale", "C.UTF-8"]
        initdb += ["--no-sync"]  # thrown away after the session: need not reach the disk
        _run(initdb, folder, 120)
        password_file.unlink()
        # the server as a child of ours (not daemonised by pg_ctl start), so that its
        # exit is ours to reap; in a process group of its own, for the SIGKILL above
        postgres: list[str | Path] = [
            bin_dir / "postgres",
            "-D",
            server.data,
            "-p",
            str(server.port),
        ]
        postgres += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={folder}"]
        postgres += ["-c", "fsync=off"]  # as --no-sync
        with server.log.open("ab") as log:
            process = subprocess.Popen(
                _as_postgres(postgres),
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_ready(server, process)
            server.create_database(ROLE)
            yield server
        finally:
            _stop(server, process)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
