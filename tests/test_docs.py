"""The docs stay true to the code: the README's architecture map lists every module, the cli docstring every
command, and no path or dotted name in the README points at a module that does not exist."""

from __future__ import annotations

import re

from harness import cli

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def _modules() -> set[str]:
    """``sweep/driver.py``-style paths of every module under ``harness/`` except package ``__init__`` files."""
    root = REPO / "harness"
    return {str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "__init__.py"}


def test_the_architecture_map_lists_every_module():
    listed = set(re.findall(r"`((?:[a-z_]+/)?[a-z_]+\.py)`", _section("Architecture")))
    missing = sorted(_modules() - listed)
    assert not missing, f"modules missing from the README's Architecture section: {missing}"
    stale = sorted(m for m in listed if "/" in m and m not in _modules() and not (REPO / m).is_file())
    assert not stale, f"the Architecture section names modules that do not exist: {stale}"


def test_readme_paths_and_dotted_names_point_at_real_modules():
    paths = set(re.findall(r"harness/[a-z_/]+\.py", README))
    assert paths, "the README names no module path at all"
    assert sorted(p for p in paths if not (REPO / p).is_file()) == []
    dotted = set(re.findall(r"\bharness(?:\.[a-z_]+)+", README)) - {"harness.db"}  # the default SQLite file
    missing = []
    for name in dotted:
        parts = name.split(".")
        # the longest prefix that is a module or package; what follows may be an attribute (Storage.claim_next)
        exists = any(
            (REPO / "/".join(parts[:end])).with_suffix(".py").is_file() or (REPO / "/".join(parts[:end])).is_dir()
            for end in range(2, len(parts) + 1)
        )
        if not exists:
            missing.append(name)
    assert sorted(missing) == []


def test_the_cli_docstring_lists_every_command():
    parser = cli.build_parser("run_study.py")
    commands = next(a for a in parser._actions if a.dest == "command").choices
    undocumented = sorted(name for name in commands if f"``{name}``" not in cli.__doc__)
    assert not undocumented, f"sub-commands missing from the harness.cli docstring: {undocumented}"
