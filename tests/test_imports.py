"""Module layering: no import cycles, the core never imports benchmarks or the CLI, light commands stay torch-free."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "bench")
HEAVY = ("torch", "transformers")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_files() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        if (REPO / package).is_dir()
        for path in sorted((REPO / package).rglob("*.py"))
    }


def _resolve(name: str, known: set[str]) -> str:
    """``harness.x.y`` -> the longest prefix that is a project module (the name itself if none is, e.g. a new one)."""
    parts = name.split(".")
    for end in range(len(parts), 1, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return name


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that ``module`` imports anywhere in its file (top level, functions, try blocks, ...)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: ``from . import x`` / ``from ..y import z``
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in known else _resolve(source, known))
    root = module.split(".")[0]
    return {
        name for name in found if name.split(".")[0] in PACKAGES and name != module and name != root
    }  # own package __init__: ignored


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules (``harness.x``, ``bench.y``) it imports, from every ``.py`` file's syntax."""
    files = _project_files()
    known = set(files)
    return {module: _imports(module, path, known) for module, path in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:  # the shortest way back to the component's first module, inside the component
        start = min(component)
        parents: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in parents:
            following = []
            for node in frontier:
                for target in sorted(graph[node] & component):
                    if target not in parents:
                        parents[target] = node
                        following.append(target)
            frontier = following
        path = [start]
        while len(path) == 1 or path[-1] != start:
            path.append(parents[path[-1]])
        cycles.append(path[::-1])
    return sorted(cycles)


def test_import_graph_reads_every_kind_of_import(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "import os\nimport harness.glue.sub\nfrom harness import plots, __version__\n"
        "from harness.config import load_study\nfrom . import sibling\nfrom .other import thing\n"
        "def later():\n    from harness.cli import main\n    import bench.sweep\n"
        "try:\n    from harness.new_module import x\nexcept ImportError:\n    pass\n"
    )
    known = {
        "harness",
        "harness.glue",
        "harness.plots",
        "harness.config",
        "harness.cli",
        "harness.sibling",
        "harness.other",
        "harness.pkg",
        "bench",
        "bench.sweep",
    }
    assert _imports("harness.pkg", source, known) == {
        "harness.glue",
        "harness.plots",
        "harness.config",
        "harness.sibling",
        "harness.other",
        "harness.cli",
        "bench.sweep",
        "harness.new_module",
    }  # not ``harness`` (own package __init__) nor itself
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "x"}, "d": {"a"}, "x": set()}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "harness.store.storage" in graph["harness.cli"]  # imported inside a function, counted all the same


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles (lazy imports count):\n" + "\n".join(" -> ".join(c) for c in cycles)


# The house by concept (README, "Architecture"): a module in package P imports package Q only if Q is P or
# lower. The command line sits on top; ``harness/__init__`` (the version) is below everything.
LAYERS = {"util": 0, "spec": 1, "data": 2, "store": 2, "distill": 3, "sweep": 4, "report": 4, "tools": 5, "cli": 6}
TORCH_FREE = ("spec", "store", "report")


def _package(module: str) -> str:
    """``harness.sweep.driver`` -> ``sweep``; ``harness.cli`` -> ``cli``; ``harness`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_lives_in_a_layered_package():
    loose = sorted(
        m for m in import_graph() if m.startswith("harness") and _package(m) not in LAYERS and m != "harness"
    )
    assert not loose, f"modules outside the layered packages {sorted(LAYERS)}: {loose}"


def test_packages_import_only_their_own_layer_or_lower():
    bad = sorted(
        f"{module} (layer {LAYERS[_package(module)]}) -> {target} (layer {LAYERS[_package(target)]})"
        for module, targets in import_graph().items()
        if module.startswith("harness.")
        for target in targets
        if target.startswith("harness.")
        and _package(target) != _package(module)
        and LAYERS[_package(target)] >= LAYERS[_package(module)]
    )
    assert not bad, "imports against the layering (lower layers never import higher or same-layer packages):\n" + (
        "\n".join(bad)
    )


def test_the_layering_rule_catches_an_upward_import(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from harness.sweep.driver import Runner\n")
    known = {"harness.store.claims", "harness.sweep.driver"}
    (target,) = _imports("harness.store.claims", source, known)
    assert LAYERS[_package(target)] > LAYERS[_package("harness.store.claims")]


def test_public_faces_resolve_every_name():
    """Each package ``__init__`` re-exports a small public face lazily; every name in ``__all__`` exists."""
    import importlib

    for package in LAYERS:
        if package == "cli":
            continue
        module = importlib.import_module(f"harness.{package}")
        assert module.__all__, package
        for name in module.__all__:
            assert getattr(module, name) is not None, (package, name)
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            module.nope  # noqa: B018


def test_core_never_imports_benchmarks_or_the_cli():
    """Only ``run_study.py`` and ``bench`` sit on top of the core; the core depends on neither."""
    bad = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if module.split(".")[0] == "harness"
        for target in targets
        if target.split(".")[0] == "bench" or target == "harness.cli"
    )
    assert not bad, "the core imports the benchmarks or the CLI:\n" + "\n".join(bad)


# Run in a fresh interpreter: a finder first in sys.meta_path notes, without taking part, which project
# modules were being imported when a heavy library was first asked for; the last line is the verdict.
PROBE = """
import sys, traceback
HEAVY = {heavy!r}
chain = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name in HEAVY and not chain:
            frames = [f.f_globals.get("__name__", "") for f, _ in traceback.walk_stack(None)][::-1]
            chain.extend(m for m in dict.fromkeys(frames) if m.split(".")[0] in {packages!r})
            chain.append(name)
        return None
sys.meta_path.insert(0, Watch())
{code}
print("HEAVY", sorted(m for m in HEAVY if m in sys.modules), " -> ".join(chain), sep="|")
"""

STATUS = """
from harness.cli import main
assert main(["status", "--storage", {url!r}]) == 0
"""

REPORT_HELP = """
from harness.cli import main
try:
    main(["report", "--help"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
else:
    raise AssertionError("report --help did not exit")
"""

LOAD_STUDY = """
from harness.spec.config import load_study
load_study("studies/demo.yaml")
"""


def _heavy_modules(code: str) -> tuple[str, str, float]:
    """(the heavy modules loaded, the import chain that loaded the first, seconds) after ``code`` in a fresh Python."""
    script = PROBE.format(heavy=HEAVY, packages=PACKAGES, code=code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = [line for line in done.stdout.splitlines() if line.startswith("HEAVY|")][-1]
    _, loaded, chain = verdict.split("|")
    return loaded, chain, seconds


@pytest.fixture
def status_db(tmp_path) -> str:
    """A small database: the harness's tables and one Optuna study, made by another process."""
    url = f"sqlite:///{tmp_path / 'light.db'}"
    make = (
        "import optuna\nfrom harness.store.storage import Storage\n"
        f"Storage({url!r})\noptuna.create_study(study_name='t/SST-2/kd', storage={url!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", make],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return url


@pytest.mark.parametrize("command", ["status", "report-help", "load-study"])
def test_light_commands_do_not_import_torch(command, request):
    """``status``, ``report --help`` and reading a study file never load torch or transformers."""
    if command == "status":
        code = STATUS.format(url=request.getfixturevalue("status_db"))
    else:
        code = {"report-help": REPORT_HELP, "load-study": LOAD_STUDY}[command]
    loaded, chain, seconds = _heavy_modules(code)
    if command == "status":
        print(f"status subprocess: {seconds:.2f} s wall")  # timing targets live in the benchmarks, not here
    assert loaded == "[]", f"{command} imported {loaded}, first through {chain}"


@pytest.mark.parametrize("package", TORCH_FREE)
def test_torch_free_packages_import_without_torch(package):
    """Every module of ``spec``, ``store`` and ``report`` imports without torch or transformers."""
    modules = sorted(m for m in import_graph() if m.startswith("harness.") and _package(m) == package)
    loaded, chain, _ = _heavy_modules("".join(f"import {m}\n" for m in modules))
    assert loaded == "[]", f"harness.{package} imported {loaded}, first through {chain}"
