"""The node's image cache: download once, check the digest, evict least recently used.

Entries are named by their sha256, so two image ids with the same bytes share one file
and a finished file is never rewritten. A file's mtime records its last use, so the LRU
order survives an NC restart. Concurrent runs of one image wait for one download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import requests

from mallee.common.errors import (
    ImageDigestMismatch,
    ImageFetchFailed,
    ImageRejected,
    ImageTooLarge,
)
from mallee.nc import disks
from mallee.nc.model import ImageRef

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


class ImageCache:
    def __init__(
        self,
        directory: Path,
        budget_bytes: int,
        in_use: Callable[[], set[str]],
        timeout_s: float = 600,
    ) -> None:
        """``in_use`` names the digests live instances depend on; they are never evicted."""
        self.directory = directory
        self.budget_bytes = budget_bytes
        self._in_use = in_use
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._downloads: dict[str, Future[Path]] = {}
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)  # QEMU runs as its own user and reads backing files
        for leftover in directory.glob("*.part"):
            leftover.unlink()

    def path(self, image: ImageRef) -> Path:
        return self.directory / image.sha256

    def fetch(self, image: ImageRef) -> Path:
        """The local file of ``image``, downloading it unless cached or already coming."""
        path = self.path(image)
        with self._lock:
            if path.exists():
                os.utime(path)
                return path
            future = self._downloads.get(image.sha256)
            leader = future is None
            if future is None:
                future = self._downloads[image.sha256] = Future()
        if not leader:
            return future.result()
        try:
            self._download(image, path)
            future.set_result(path)
        except BaseException as e:
            future.set_exception(e)
            raise
        finally:
            with self._lock:
                del self._downloads[image.sha256]
        self.evict(keep=image.sha256)
        return path

    def _download(self, image: ImageRef, path: Path) -> None:
        part = path.with_name(f"{path.name}.{threading.get_ident()}.part")
        digest = hashlib.sha256()
        size = 0
        logger.info("downloading %s from %s", image.id, image.url)
        try:
            deadline = time.monotonic() + self._timeout_s
            with requests.get(image.url, stream=True, timeout=(10, 60)) as response:
                if response.status_code != 200:
                    raise ImageFetchFailed(
                        f"image {image.id}: GET {image.url} answered "
                        f"{response.status_code} {response.reason}"
                    )
                with part.open("wb") as out:
                    for chunk in response.iter_content(CHUNK):
                        if time.monotonic() > deadline:
                            raise ImageFetchFailed(
                                f"image {image.id}: GET {image.url} took longer than "
                                f"{self._timeout_s:.0f} s (image_fetch_timeout_s)"
                            )
                        size += len(chunk)
                        if size > self.budget_bytes:
                            raise ImageTooLarge(
                                f"image {image.id} is larger than the node's image cache "
                                f"({self.budget_bytes} bytes)"
                            )
                        digest.update(chunk)
                        out.write(chunk)
            if digest.hexdigest() != image.sha256:
                raise ImageDigestMismatch(
                    f"image {image.id} from {image.url}: expected sha256:{image.sha256}, "
                    f"got sha256:{digest.hexdigest()}"
                )
            if image.format == "qcow2":
                # A backing or data file would let an image reach other files of the host.
                others = disks.external_files(disks.image_info(part, "qcow2"))
                if others:
                    raise ImageRejected(
                        f"image {image.id} is a qcow2 image naming other files {others}; "
                        "images must be self-contained"
                    )
            part.chmod(0o644)
            part.rename(path)
        except requests.RequestException as e:
            raise ImageFetchFailed(f"image {image.id}: GET {image.url} failed: {e}") from e
        finally:
            part.unlink(missing_ok=True)
        logger.info("cached %s (%d bytes) as %s", image.id, size, path.name)

    def entries(self) -> list[Path]:
        """Cached files, least recently used first."""
        files = [p for p in self.directory.iterdir() if not p.name.endswith(".part")]
        return sorted(files, key=lambda p: p.stat().st_mtime)

    def evict(self, keep: str = "") -> None:
        """Remove least recently used entries until the cache fits its budget, sparing
        those in use and ``keep`` (the one just fetched for a caller)."""
        with self._lock:
            entries = self.entries()
            total = sum(p.stat().st_size for p in entries)
            in_use = self._in_use() | {keep}
            for entry in entries:
                if total <= self.budget_bytes:
                    return
                if entry.name in in_use:
                    continue
                total -= entry.stat().st_size
                entry.unlink()
                logger.info("evicted %s from the image cache", entry.name)
            if total > self.budget_bytes:
                logger.warning(
                    "image cache holds %d bytes over its budget of %d: all in use",
                    total - self.budget_bytes,
                    self.budget_bytes,
                )
