"""scripts/prepare_code_text.py: every Python file of the sdist lands in exactly one half, whole."""
import subprocess
import sys
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "prepare_code_text.py"


def test_split_by_file_is_disjoint_and_complete(tmp_path):
    src = tmp_path / "pkg-1.0"
    files = {f"pkg/mod{i}.py": f"def f{i}():\n    return {i}\n" for i in range(7)}
    files["pkg/empty/__init__.py"] = ""
    files["README.md"] = "not python"
    for name, body in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(body)
    sdist = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(src, arcname="pkg-1.0")
    subprocess.run([sys.executable, str(SCRIPT), str(sdist), str(tmp_path / "out")], check=True, capture_output=True)
    halves = {p: (tmp_path / "out" / f"pkg-1.0-{p}.txt").read_text() for p in ("calib", "eval")}
    names = {p: {ln[len("# file: "):] for ln in t.splitlines() if ln.startswith("# file: ")} for p, t in halves.items()}
    assert names["calib"].isdisjoint(names["eval"])
    assert names["calib"] | names["eval"] == {f"pkg/mod{i}.py" for i in range(7)}  # empty file and README left out
    assert len(names["calib"]) == 4 and len(names["eval"]) == 3
    for part, text in halves.items():
        for name in names[part]:
            assert f"# file: {name}\n{files[name].strip()}" in text
