"""Protocol v2 code text: the Python files of the PyPI sdist networkx==3.3, split BY FILE into a
calibration half and an evaluation half (no file contributes to both), each half in a fixed shuffled
order so the first evaluation windows span the whole package rather than one sub-package."""
import random
import sys
import tarfile
from pathlib import Path

sdist, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
with tarfile.open(sdist) as tar:
    members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".py")), key=lambda m: m.name)
    files = [(m.name.split("/", 1)[1], tar.extractfile(m).read().decode("utf-8", errors="replace")) for m in members]
files = [(name, text.strip()) for name, text in files if text.strip()]  # empty __init__.py files carry nothing
halves = {"calib": files[0::2], "eval": files[1::2]}  # alternate files in sorted path order: disjoint, both diverse
out_dir.mkdir(parents=True, exist_ok=True)
stem = sdist.name.removesuffix(".tar.gz")
for part, chosen in halves.items():
    chosen = list(chosen)
    random.Random(0).shuffle(chosen)
    text = "\n\n".join(f"# file: {name}\n{body}" for name, body in chosen) + "\n"
    (out_dir / f"{stem}-{part}.txt").write_text(text)
    print(f"{stem}-{part}.txt: {len(chosen)} files, {len(text)} characters")
