"""A full disk while writing a checkpoint: one line, exit status 2, nothing that looks like a checkpoint left."""
from __future__ import annotations

import subprocess
import uuid

import pytest
from click.testing import CliRunner

from llmbin.cli import main


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MB tmpfs (needs root, as CI has; skipped elsewhere)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_quantize_onto_a_full_disk_says_so_in_one_line(tiny_disk, tiny_llama_dir, text_file):
    out = tiny_disk / "q"
    result = CliRunner().invoke(main, ["quantize", str(tiny_llama_dir), "--method", "rtn", "--bits", "4", "--dataset",
                                       str(text_file), "--nsamples", "2", "--seqlen", "16", "-o", str(out), "-q"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "no space left on the device" in lines[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # nothing that looks like a finished checkpoint
    leftovers = [p.name for p in tiny_disk.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
