"""Quiet third-party logging, so that the console shows the harness's own lines and progress bars.

Cheap by default (Optuna only, and an environment default for transformers), so that light commands such
as ``status`` never import transformers just to silence it.
"""

from __future__ import annotations

import os
import sys
import warnings


def quiet_libraries(transformers: bool = False) -> None:
    """Optuna to warnings, transformers to errors without progress bars.

    ``transformers=True`` imports both to do so (commands that train); otherwise only the libraries
    already imported are touched (call again after importing them), and transformers gets
    ``TRANSFORMERS_VERBOSITY=error`` as a default for whenever it is imported.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if transformers or "optuna" in sys.modules:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if transformers or "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
