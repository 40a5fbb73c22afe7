"""The image cache against a real HTTP server on loopback."""

import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

from mallee.common.errors import (
    ImageDigestMismatch,
    ImageFetchFailed,
    ImageRejected,
    ImageTooLarge,
)
from mallee.nc.images import ImageCache
from mallee.nc.model import ImageRef
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
