"""A package's public face without its import cost: names re-exported on first use (PEP 562).

A subpackage ``__init__`` lists ``{name: module}`` and gets a module ``__getattr__`` and ``__all__``.
``from harness.sweep import Runner`` then imports ``harness.sweep.driver`` only when asked, so the
light commands (``status``, ``report --help``) never pay for torch through a package ``__init__``.
Code inside the harness imports from the defining module; the faces are for users and the README.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def public_face(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], list[str]]:
    """``(__getattr__, __all__)`` for ``package``: each name in ``exports`` comes from ``package.<module>``."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__, sorted(exports)
