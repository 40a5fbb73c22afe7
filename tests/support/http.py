"""A real HTTP server on loopback serving a folder, counting GETs per path; it can be
made slow (each GET waits first) or trickle its bytes, as a congested image server."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

TRICKLE_PIECE = 4096


@dataclass
class FileServer:
    root: Path
    url: str = ""
    gets: Counter[str] = field(default_factory=Counter)
    delay_s: float = 0.0  # how long each GET waits before answering (a slow server)
    bytes_per_s: int = 0  # when set, bodies trickle out at this rate
    aborted: Counter[str] = field(default_factory=Counter)  # GETs the client hung up on


@contextmanager
def serve_directory(
    root: Path, delay_s: float = 0.0, port: int = 0, address: str = "127.0.0.1"
) -> Iterator[FileServer]:
    server = FileServer(root, delay_s=delay_s)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            server.gets[self.path] += 1
            time.sleep(server.delay_s)
            super().do_GET()

        def copyfile(self, source: BinaryIO, outputfile: BinaryIO) -> None:  # type: ignore[override]
            if not server.bytes_per_s:
                shutil.copyfileobj(source, outputfile)
                return
            try:
                while piece := source.read(TRICKLE_PIECE):
                    outputfile.write(piece)
                    outputfile.flush()
                    time.sleep(len(piece) / server.bytes_per_s)
            except OSError:  # the client hung up
                server.aborted[self.path] += 1

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(
        (address, port), functools.partial(Handler, directory=str(root))
    )
    httpd.daemon_threads = True
    server.url = f"http://{address}:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
