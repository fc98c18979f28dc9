"""The package keeps its shape (docs/architecture.md): the import-linter contract holds and can fail, no import
cycle, small files, and a package root that holds only its face."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llmbin"
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[test]')")


def lint(config: Path, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": str(LINT.parent), **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    return subprocess.run([str(LINT), "--config", str(config), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_layering_contract_holds():
    proc = lint(ROOT / "pyproject.toml", ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """A kernel module importing the CLI (the example of the restructuring issue) fails the contract."""
    copy = tmp_path / "llmbin_copy"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    config = (ROOT / "pyproject.toml").read_text()
    contract = config[config.index("[tool.importlinter]"):]
    (tmp_path / "contract.toml").write_text(re.sub(r"\bllmbin\b", "llmbin_copy", contract))
    assert lint(tmp_path / "contract.toml", tmp_path, tmp_path).returncode == 0  # the copy itself is fine
    kernel = copy / "kernels" / "torch_backend.py"
    kernel.write_text(kernel.read_text() + "\nfrom ..cli import friendly_errors  # noqa: E402,F401\n")
    proc = lint(tmp_path / "contract.toml", tmp_path, tmp_path)
    assert proc.returncode != 0
    assert "llmbin_copy.kernels.torch_backend -> llmbin_copy.cli" in proc.stdout


def test_no_import_cycle_between_modules():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("llmbin")  # function-level imports included
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    cycles = [c for c in strongly_connected(edges) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def strongly_connected(edges: dict) -> list[list[str]]:
    """Tarjan's components, iteratively."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(component)
    return out


def test_strongly_connected_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert sorted(map(sorted, strongly_connected(edges))) == [["a", "b", "c"], ["d"]]


def test_files_stay_small():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 300]
    long += [f"{p.relative_to(ROOT)}: {n}" for pattern in ("*.cpp", "*.h") for p in PACKAGE.rglob(pattern)
             if (n := len(p.read_text().splitlines())) > 350]
    assert not long, f"over the size limit (300 lines Python, 350 C++): {long}"


def test_the_package_root_holds_only_its_face():
    files = sorted(p.name for p in PACKAGE.iterdir() if p.is_file())
    assert files == ["__init__.py", "api.py", "errors.py"]


def test_no_benchmark_script_shadows_an_installed_module():
    """`python benchmarks/X.py` puts benchmarks/ first on sys.path: a script named like a module that transformers
    or torch imports (benchmarks/kernels.py once hid the `kernels` package) breaks the run."""
    import importlib.util

    clashes = []
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        spec = importlib.util.find_spec(script.stem)
        if spec is not None and spec.origin and Path(spec.origin).resolve() != script.resolve():
            clashes.append(f"{script.name} shadows {spec.origin}")
    assert not clashes, clashes
