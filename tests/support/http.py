"""A real HTTP server on loopback serving a folder, counting GETs per path."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FileServer:
    root: Path
    url: str = ""
    gets: Counter[str] = field(default_factory=Counter)
    delay_s: float = 0.0  # how long each GET waits before answering (a slow server)


@contextmanager
def serve_directory(root: Path, delay_s: float = 0.0, port: int = 0) -> Iterator[FileServer]:
    server = FileServer(root, delay_s=delay_s)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            server.gets[self.path] += 1
            time.sleep(server.delay_s)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(Handler, directory=str(root))
    )
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
