"""The node's image cache: download once, check the digest, evict least recently used.

Entries are named by their sha256, so two image ids with the same bytes share one file
and a finished file is never rewritten. A file's mtime records its last use, so the LRU
order survives an NC restart. Concurrent runs of one image wait for one download, made
on a thread of its own: a launch that is cancelled (its instance terminated) stops
waiting at once, and the download stops when no launch waits for it any more.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import urllib3

from mallee.common.errors import (
    HostCommandFailed,
    ImageDigestMismatch,
    ImageFetchFailed,
    ImageRejected,
    ImageTooLarge,
    LaunchFailed,
    MalleeError,
)
from mallee.common.rpc import ClientTLS
from mallee.nc import disks
from mallee.nc.model import ImageRef

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


class LaunchCancelled(Exception):
    """The instance was terminated while its launch was under way."""


class Cancellation:
    """Set by terminateInstance; whatever a launch waits on registers how to stop it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def check(self) -> None:
        if self._cancelled:
            raise LaunchCancelled()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return
        callback()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


@dataclass
class _Download:
    """One download under way and the launches waiting for it."""

    waiters: list[Future[Path]] = field(default_factory=list)
    stopped: str = ""  # why it was cut short: no one waits any more, or it took too long

    def stop(self, why: str) -> None:
        self.stopped = why


class ImageCache:
    def __init__(
        self,
        directory: Path,
        budget_bytes: int,
        in_use: Callable[[], set[str]],
        timeout_s: float = 600,
        tls_files: ClientTLS | None = None,
    ) -> None:
        """``in_use`` names the digests live instances depend on; they are never evicted.
        With ``tls_files``, an https URL (the CLC's image store) must show a certificate
        of the cloud's CA, and is shown the NC's own."""
        self.directory = directory
        self.budget_bytes = budget_bytes
        self._in_use = in_use
        self._timeout_s = timeout_s
        self._tls = tls_files
        self._lock = threading.Lock()
        self._downloads: dict[str, _Download] = {}
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)  # QEMU runs as its own user and reads backing files
        for leftover in directory.glob("*.part"):
            leftover.unlink()

    def path(self, image: ImageRef) -> Path:
        return self.directory / image.sha256

    def fetch(self, image: ImageRef, cancellation: Cancellation | None = None) -> Path:
        """The local file of ``image``, downloading it unless cached or already coming.
        Raises LaunchCancelled as soon as ``cancellation`` is set."""
        path = self.path(image)
        waiter: Future[Path] = Future()
        with self._lock:
            if path.exists():
                os.utime(path)
                return path
            download = self._downloads.get(image.sha256)
            if download is None:
                download = _Download()
                threading.Thread(  # logs under the request id of the first launch
                    target=contextvars.copy_context().run,
                    args=(self._download, image, path, download),
                    name=f"image-{image.sha256[:12]}",
                    daemon=True,
                ).start()  # registered only once started: none waits for a thread never run
                self._downloads[image.sha256] = download
            download.waiters.append(waiter)
        if cancellation is not None:
            cancellation.on_cancel(lambda: self._leave(image.sha256, waiter))
        return waiter.result()

    def _leave(self, sha256: str, waiter: Future[Path]) -> None:
        """A cancelled launch stops waiting; the last one to leave stops the download,
        and a later fetch of the image starts a download of its own."""
        with self._lock:
            download = self._downloads.get(sha256)
            if download is None or waiter not in download.waiters:
                return
            download.waiters.remove(waiter)
            if not download.waiters:
                download.stop("no launch waits for it any more")
                del self._downloads[sha256]
        waiter.set_exception(LaunchCancelled())

    def _give_up(self, image: ImageRef, download: _Download) -> None:
        """The download ran out of time: its waiters fail now, not once the server
        sends its next bytes (or its read timeout passes)."""
        download.stop(f"it took longer than {self._timeout_s:.0f} s (image_fetch_timeout_s)")
        self._finish(
            image.sha256,
            download,
            ImageFetchFailed(f"image {image.id}: GET {image.url} stopped: {download.stopped}"),
        )

    def _finish(self, sha256: str, download: _Download, outcome: Path | BaseException) -> None:
        """Hand the outcome to whoever still waits, and forget the download."""
        with self._lock:
            if self._downloads.get(sha256) is download:
                del self._downloads[sha256]
            waiters, download.waiters = download.waiters, []
        for waiter in waiters:
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)

    def _download(self, image: ImageRef, path: Path, download: _Download) -> None:
        timer = threading.Timer(self._timeout_s, self._give_up, [image, download])
        timer.start()
        outcome: Path | BaseException
        try:
            self._fetch_into(image, path, download)
            self.evict(keep=image.sha256)
            outcome = path
        except MalleeError as e:
            outcome = e
        except Exception as e:
            logger.exception("downloading %s", image.id)  # e.g. the cache's disk is full
            outcome = LaunchFailed(
                f"image {image.id} could not be stored on this node ({type(e).__name__}; "
                "the node's log has the details)"
            )
        finally:
            timer.cancel()
        self._finish(image.sha256, download, outcome)

    def _fetch_into(self, image: ImageRef, path: Path, download: _Download) -> None:
        part = path.with_name(f"{path.name}.{threading.get_ident()}.part")
        digest = hashlib.sha256()
        size = 0
        logger.info("downloading %s from %s", image.id, image.url)

        def stopped() -> ImageFetchFailed:
            return ImageFetchFailed(
                f"image {image.id}: GET {image.url} stopped: {download.stopped}"
            )

        try:
            tls: dict[str, Any] = {}
            if self._tls is not None and image.url.startswith("https://"):
                tls = {"verify": self._tls.ca_cert, "cert": (self._tls.cert, self._tls.key)}
            with requests.get(image.url, stream=True, timeout=(10, 60), **tls) as response:
                if response.status_code != 200:
                    raise ImageFetchFailed(
                        f"image {image.id}: GET {image.url} answered "
                        f"{response.status_code} {response.reason}"
                    )
                with part.open("wb") as out:
                    # read1 hands over what has arrived, so a trickling server cannot
                    # keep a stopped download alive; a silent one meets the read timeout.
                    while chunk := response.raw.read1(CHUNK, decode_content=True):
                        if download.stopped:
                            raise stopped()
                        size += len(chunk)
                        if size > self.budget_bytes:
                            raise ImageTooLarge(
                                f"image {image.id} is larger than the node's image cache "
                                f"({self.budget_bytes} bytes)"
                            )
                        digest.update(chunk)
                        out.write(chunk)
            if download.stopped:
                raise stopped()
            if digest.hexdigest() != image.sha256:
                raise ImageDigestMismatch(
                    f"image {image.id} from {image.url}: expected sha256:{image.sha256}, "
                    f"got sha256:{digest.hexdigest()}"
                )
            if image.format == "qcow2":
                self._check_qcow2(image, part)
            part.chmod(0o644)
            part.rename(path)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
            if download.stopped:
                raise stopped() from e
            raise ImageFetchFailed(f"image {image.id}: GET {image.url} failed: {e}") from e
        finally:
            part.unlink(missing_ok=True)
        logger.info("cached %s (%d bytes) as %s", image.id, size, path.name)

    @staticmethod
    def _check_qcow2(image: ImageRef, part: Path) -> None:
        """A qcow2 image must be one, and self-contained: a backing or data file would
        let it reach other files of the host."""
        try:
            info = disks.image_info(part, "qcow2")
        except HostCommandFailed as e:
            # stuck, missing or killed (a signal): the node's fault, not the image's
            if e.exit_status is None or e.exit_status < 0:
                raise
            raise ImageRejected(
                f"image {image.id} is declared qcow2 but qemu-img cannot read it as qcow2"
            ) from e
        others = disks.external_files(info)
        if others:
            raise ImageRejected(
                f"image {image.id} is a qcow2 image naming other files {others}; "
                "images must be self-contained"
            )

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
