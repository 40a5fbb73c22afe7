"""The image cache against a real HTTP server on loopback."""

import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

from mallee.common.errors import (
    HostCommandFailed,
    ImageDigestMismatch,
    ImageFetchFailed,
    ImageRejected,
    ImageTooLarge,
)
from mallee.nc.images import Cancellation, ImageCache, LaunchCancelled
from mallee.nc.model import ImageRef
from tests.support.guest import wait_until
from tests.support.http import FileServer


def publish(server: FileServer, name: str, size: int, fill: bytes = b"x") -> ImageRef:
    data = (fill * size)[:size]
    (server.root / name).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    return ImageRef(f"emi-{digest[:8]}", f"{server.url}/{name}", f"sha256:{digest}")


def cache(tmp_path: Path, budget: int, in_use: set[str] | None = None) -> ImageCache:
    return ImageCache(tmp_path / "cache", budget, lambda: in_use or set())


def test_download_once_then_from_cache(tmp_path: Path, file_server: FileServer) -> None:
    image = publish(file_server, "a.img", 1000)
    images = cache(tmp_path, 10_000)
    first = images.fetch(image)
    assert images.fetch(image) == first
    assert first.read_bytes() == b"x" * 1000
    assert file_server.gets["/a.img"] == 1


def test_concurrent_fetches_download_once(tmp_path: Path, file_server: FileServer) -> None:
    file_server.delay_s = 0.5  # every fetch starts while the first download is under way
    image = publish(file_server, "big.img", 8 << 20)
    images = cache(tmp_path, 64 << 20)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(images.fetch(image))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 6
    assert file_server.gets["/big.img"] == 1


def test_least_recently_used_is_evicted(tmp_path: Path, file_server: FileServer) -> None:
    images = cache(tmp_path, 2500)
    a = publish(file_server, "a", 1000, b"a")
    b = publish(file_server, "b", 1000, b"b")
    c = publish(file_server, "c", 1000, b"c")
    path_a, path_b = images.fetch(a), images.fetch(b)
    os.utime(path_a, (1, 1))  # a used long ago...
    os.utime(path_b, (2, 2))
    images.fetch(a)  # ...then used again: now b is the least recently used
    images.fetch(c)
    assert path_a.exists() and images.path(c).exists()
    assert not path_b.exists()


def test_images_in_use_are_kept(tmp_path: Path, file_server: FileServer) -> None:
    a = publish(file_server, "a", 1000, b"a")
    b = publish(file_server, "b", 1000, b"b")
    images = cache(tmp_path, 1500, in_use={a.sha256})
    images.fetch(a)
    images.fetch(b)
    assert images.path(a).exists()  # in use: kept even though least recently used
    assert images.path(b).exists()  # nothing else evictable; over budget, with a warning


def test_digest_mismatch_leaves_nothing(tmp_path: Path, file_server: FileServer) -> None:
    good = publish(file_server, "a", 100)
    bad = ImageRef(good.id, good.url, "sha256:" + "0" * 64)
    images = cache(tmp_path, 10_000)
    with pytest.raises(ImageDigestMismatch, match="expected sha256:0000"):
        images.fetch(bad)
    assert list(images.directory.iterdir()) == []


def test_missing_image_names_url_and_status(tmp_path: Path, file_server: FileServer) -> None:
    missing = ImageRef("emi-00000000", f"{file_server.url}/nope", "sha256:" + "1" * 64)
    with pytest.raises(ImageFetchFailed, match=r"/nope answered 404"):
        cache(tmp_path, 10_000).fetch(missing)


def test_refused_connection(tmp_path: Path) -> None:
    image = ImageRef("emi-00000000", "http://127.0.0.1:9/x", "sha256:" + "1" * 64)
    with pytest.raises(ImageFetchFailed, match="failed"):
        cache(tmp_path, 10_000).fetch(image)


def test_image_over_budget(tmp_path: Path, file_server: FileServer) -> None:
    image = publish(file_server, "huge", 5000)
    images = cache(tmp_path, 4000)
    with pytest.raises(ImageTooLarge):
        images.fetch(image)
    assert list(images.directory.iterdir()) == []


def test_qcow2_naming_another_file_is_rejected(tmp_path: Path, file_server: FileServer) -> None:
    base = tmp_path / "someone-elses.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(base), "1M"], check=True)
    sneaky = file_server.root / "sneaky.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(sneaky)],
        check=True,
    )
    digest = hashlib.sha256(sneaky.read_bytes()).hexdigest()
    image = ImageRef("emi-5eaa5eaa", f"{file_server.url}/sneaky.qcow2", f"sha256:{digest}", "qcow2")
    images = cache(tmp_path, 10 << 20)
    with pytest.raises(ImageRejected, match=r"someone-elses\.raw"):
        images.fetch(image)
    assert list(images.directory.iterdir()) == []


def test_lru_order_survives_restart(tmp_path: Path, file_server: FileServer) -> None:
    a = publish(file_server, "a", 1000, b"a")
    b = publish(file_server, "b", 1000, b"b")
    images = cache(tmp_path, 10_000)
    os.utime(images.fetch(b), (1, 1))
    images.fetch(a)
    assert [p.name for p in cache(tmp_path, 10_000).entries()] == [b.sha256, a.sha256]


def fetch_in_thread(
    images: ImageCache, image: ImageRef, cancellation: Cancellation
) -> list[object]:
    """Start a fetch; the list gets its outcome (a path or the exception)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(images.fetch(image, cancellation))
        except Exception as e:
            outcome.append(e)

    threading.Thread(target=run, daemon=True).start()
    return outcome


def test_cancelled_fetch_stops_at_once_and_so_does_the_download(
    tmp_path: Path, file_server: FileServer
) -> None:
    file_server.bytes_per_s = 64 << 10  # 4 MiB would take a minute
    image = publish(file_server, "slow.img", 4 << 20)
    images = cache(tmp_path, 64 << 20)
    cancellation = Cancellation()
    outcome = fetch_in_thread(images, image, cancellation)
    wait_until(lambda: bool(file_server.gets), 10, "the download to start")

    cancellation.cancel()

    wait_until(lambda: bool(outcome), 2, "the fetch to give up")
    assert isinstance(outcome[0], LaunchCancelled)
    wait_until(lambda: file_server.aborted["/slow.img"] == 1, 10, "the download to stop")
    wait_until(lambda: not list(images.directory.iterdir()), 10, "the partial file to go")


def waiting(images: ImageCache, image: ImageRef) -> int:
    """How many fetches wait for the image's download under way."""
    with images._lock:
        download = images._downloads.get(image.sha256)
        return len(download.waiters) if download else 0


def test_a_cancelled_fetch_leaves_others_their_download(
    tmp_path: Path, file_server: FileServer
) -> None:
    file_server.bytes_per_s = 2 << 20
    image = publish(file_server, "shared.img", 2 << 20)
    images = cache(tmp_path, 64 << 20)
    leaving, staying = Cancellation(), Cancellation()
    left = fetch_in_thread(images, image, leaving)
    stayed = fetch_in_thread(images, image, staying)
    wait_until(lambda: bool(file_server.gets), 10, "the download to start")
    wait_until(lambda: waiting(images, image) == 2, 10, "both fetches to wait for it")
    leaving.cancel()
    wait_until(lambda: bool(left) and bool(stayed), 30, "both fetches to end")
    assert isinstance(left[0], LaunchCancelled)
    assert stayed == [images.path(image)] and images.path(image).exists()
    assert file_server.gets["/shared.img"] == 1 and not file_server.aborted


def test_a_download_over_its_time_is_cut(tmp_path: Path, file_server: FileServer) -> None:
    file_server.bytes_per_s = 64 << 10
    image = publish(file_server, "slow.img", 4 << 20)
    images = ImageCache(tmp_path / "cache", 64 << 20, set, timeout_s=1)
    with pytest.raises(ImageFetchFailed, match=r"longer than 1 s \(image_fetch_timeout_s\)"):
        images.fetch(image)
    wait_until(lambda: not list(images.directory.iterdir()), 10, "the partial file to go")


def test_a_fetch_after_the_last_one_left_downloads_anew(
    tmp_path: Path, file_server: FileServer
) -> None:
    """The stopped download is not joined: a launch that comes after every earlier one
    was cancelled gets the image."""
    file_server.bytes_per_s = 64 << 10
    image = publish(file_server, "slow.img", 4 << 20)
    images = cache(tmp_path, 64 << 20)
    cancellation = Cancellation()
    first = fetch_in_thread(images, image, cancellation)
    wait_until(lambda: bool(file_server.gets), 10, "the download to start")
    cancellation.cancel()
    wait_until(lambda: bool(first), 2, "the first fetch to give up")
    file_server.bytes_per_s = 0  # the server is quick again

    assert images.fetch(image) == images.path(image)
    assert file_server.gets["/slow.img"] == 2


def test_a_silent_server_fails_the_fetch_when_its_time_is_up(
    tmp_path: Path, file_server: FileServer
) -> None:
    """image_fetch_timeout_s bounds the launch's wait even when the server sends
    nothing at all (its read timeout would be far longer)."""
    file_server.delay_s = 10
    image = publish(file_server, "silent.img", 1000)
    images = ImageCache(tmp_path / "cache", 64 << 20, set, timeout_s=1)
    outcome = fetch_in_thread(images, image, Cancellation())
    wait_until(lambda: bool(outcome), 4, "the fetch to fail")
    assert isinstance(outcome[0], ImageFetchFailed)
    assert "longer than 1 s" in outcome[0].message


@pytest.mark.parametrize("qemu_img", [None, "#!/bin/sh\nkill -9 $$\n"])
def test_a_qemu_img_missing_or_killed_is_the_nodes_fault(
    tmp_path: Path, file_server: FileServer, monkeypatch: pytest.MonkeyPatch, qemu_img: str | None
) -> None:
    """qemu-img missing, killed (by the OOM killer, say) or stuck says nothing about the
    image: a 500 the CC moves on from, not a 422 that would blame the request."""
    image = publish(file_server, "disk.qcow2", 1000)
    image = ImageRef(image.id, image.url, image.digest, "qcow2")
    programs = tmp_path / "bin"
    programs.mkdir()
    if qemu_img is not None:
        (programs / "qemu-img").write_text(qemu_img)
        (programs / "qemu-img").chmod(0o755)
    monkeypatch.setenv("PATH", str(programs))
    with pytest.raises(HostCommandFailed, match="qemu-img failed on this node") as caught:
        cache(tmp_path, 64 << 20).fetch(image)
    assert caught.value.status == 500
