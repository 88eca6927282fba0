"""Method plug-ins: modules that register KD methods with :func:`harness.spec.methods.register_method`.

Two ways in, one registration call:

* a study file's ``plugins: [module, …]``: imported with the study file's folder first on ``sys.path``
  (then ``PYTHONPATH``), before the file's ``methods`` are checked;
* installed packages: every entry point of the group :data:`ENTRY_POINT_GROUP` (``alp_kd.methods``), loaded
  once, the first time a study file is read (its value names a module, or a callable run with no arguments).

Every method a plug-in registers remembers the plug-in's module, file and the file's sha256 (see
:class:`~harness.spec.methods.MethodSpec`); the sweep stores them with the study and each trial and refuses a
study whose plug-in file changed since (``harness.sweep.studies.check_plugin``), as it refuses changed data.
This module stays torch-free; a plug-in may import torch itself (it is imported only when a study file names it).
A plug-in that fails to import raises HarnessError with its own error's last line.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from harness.spec import methods
from harness.util.errors import HarnessError
from harness.util.hashing import sha256_file

__all__ = ["ENTRY_POINT_GROUP", "load_entry_points", "load_plugins", "plugin_record"]

ENTRY_POINT_GROUP = "alp_kd.methods"
_LOADED: dict[str, dict] = {}  # module name → {"file", "sha256"}
_ENTRY_POINTS_DONE: list[bool] = []


def plugin_record(module: str) -> dict:
    """``{"module", "file", "sha256"}`` of a loaded plug-in module."""
    return {"module": module, **_LOADED[module]}


def load_plugins(modules: list[str] | tuple[str, ...], base_dir: Path | list[Path] | None = None) -> list[dict]:
    """Import each plug-in module once (``base_dir`` first on ``sys.path``; several folders: the first that holds
    it, as for a study read back from the database, see ``harness.sweep.studies.plugin_dirs``); its
    :func:`plugin_record` list."""
    load_entry_points()
    for module in modules:
        if not isinstance(module, str) or not module:
            raise HarnessError(f"plugins: {module!r} is not a module name (allowed: e.g. my_kd or pkg.my_kd)")
        if module not in _LOADED:
            _import(module, base_dir)
    return [plugin_record(m) for m in modules]


def load_entry_points() -> None:
    """Load the installed packages' plug-ins (entry-point group :data:`ENTRY_POINT_GROUP`), once per process."""
    if _ENTRY_POINTS_DONE:
        return
    _ENTRY_POINTS_DONE.append(True)
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        module = point.value.split(":")[0]
        if module in _LOADED:
            continue
        _import(module, None)
        if ":" in point.value:
            _guard(f"entry point {point.name!r}", lambda ep=point: ep.load()())


def _import(module: str, base_dir: Path | list[Path] | None) -> None:
    if isinstance(base_dir, list):
        found = [
            d
            for d in base_dir
            if (Path(d) / f"{module.split('.')[0]}.py").exists() or (Path(d) / module.split(".")[0]).is_dir()
        ]
        base_dir = Path(found[0]) if found else None
    added = base_dir is not None and str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        spec = _guard(f"plug-in {module!r}", lambda: importlib.util.find_spec(module))
        if spec is None:
            where = f" (looked in {base_dir} and on PYTHONPATH)" if base_dir is not None else " (not on PYTHONPATH)"
            raise HarnessError(f"plug-in {module!r} not found{where}")
        file = spec.origin if spec.origin and spec.origin not in ("built-in", "frozen") else None
        digest = sha256_file(Path(file)) if file else None
        methods._LOADING.update(module=module, file=file, sha256=digest)
        before = dict(methods.METHODS)
        try:
            _guard(f"plug-in {module!r}", lambda: importlib.import_module(module))
        except HarnessError:
            for key in set(methods.METHODS) - set(before):  # a half-imported plug-in leaves nothing behind
                del methods.METHODS[key]
            sys.modules.pop(module, None)
            raise
        finally:
            methods._LOADING.update(module=None, file=None, sha256=None)
        _LOADED[module] = {"file": file, "sha256": digest}
    finally:
        if added:
            sys.path.remove(str(base_dir))


def _guard(what: str, call):
    """Run ``call``; a HarnessError passes, any other error becomes one line with the error's own last line."""
    try:
        return call()
    except HarnessError as error:
        raise HarnessError(f"{what}: {error}") from None
    except Exception as error:  # noqa: BLE001 - a plug-in's error, whatever it is, becomes one line
        last = (str(error).strip().splitlines() or [""])[-1]
        raise HarnessError(f"{what} failed to import: {type(error).__name__}: {last}") from None
