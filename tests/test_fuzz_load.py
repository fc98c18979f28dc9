"""Loading fuzz (issue 29): a fixed-seed set of mutations of real small packed checkpoints of every format. Each
must end in one LlmbinError line, or, where only values changed, in a model that loads and computes; never a
crash, a hang, another exception, a shard read from outside the directory, or a structural change accepted
silently (tests/fuzz/runner.py says exactly how each outcome is judged). benchmarks/fuzz_load.py runs longer."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))

import corpus  # noqa: E402
import runner  # noqa: E402

COUNT, SEED = 300, 0


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-corpus")
    return root, sorted(corpus.build(root))


def test_every_mutation_of_every_format_ends_cleanly(checkpoints, tmp_path):
    root, entries = checkpoints
    results = runner.run(root, entries, COUNT, SEED, tmp_path / "work")
    failures = [r for r in results if "fail" in r]
    assert not failures, "\n".join(f"{r['mutation']} on {r['entry']} (seed {r['seed']}): {r.get('what')}: {r['fail']}"
                                   for r in failures[:10])
    applied = Counter(r["mutation"] for r in results if r["outcome"] != "skipped")
    assert set(applied) == set(runner.mutation_table()), f"never applied: {set(runner.mutation_table()) - set(applied)}"
    outcomes = Counter(r["outcome"] for r in results)
    assert outcomes["error"] > COUNT // 2 and outcomes["loaded"] >= COUNT // 20, outcomes
    assert {r["entry"] for r in results} == set(entries)  # every format was mutated


def test_the_judge_catches_what_it_should():
    """The verdicts the fuzz test relies on, on hand-made records (so a lenient judge cannot pass it)."""
    judge = runner.verdict
    assert judge({"outcome": "crash", "message": "exit status -11"})
    assert judge({"outcome": "hang", "message": "no answer"})
    assert judge({"outcome": "exception", "expect": "refuse", "message": "IndexError: ..."})
    assert judge({"outcome": "error", "expect": "refuse", "message": "two\nlines"})
    assert judge({"outcome": "error", "expect": "load", "message": "refused a value change"})
    assert judge({"outcome": "loaded", "expect": "refuse", "same": False, "finite": True})
    assert judge({"outcome": "loaded", "expect": "refuse!", "same": True, "finite": True})
    assert judge({"outcome": "loaded", "expect": "load", "same": False, "finite": False})
    assert judge({"outcome": "loaded", "expect": "refuse", "same": True, "finite": True}) is None
    assert judge({"outcome": "error", "expect": "refuse", "message": "one line"}) is None
