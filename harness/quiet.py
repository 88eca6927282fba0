"""Quiet third-party logging, so that the console shows the harness's own lines and progress bars.

Cheap by default (Optuna only, and an environment default for transformers), so that light commands such
as ``status`` never import transformers just to silence it.
"""

from __future__ import annotations

import os
import sys
import warnings


def quiet_libraries(transformers: bool = False) -> None:
    """Optuna to warnings; transformers to errors without progress bars (``transformers``: import it now to
    do so; otherwise only if something imported it already, and through ``TRANSFORMERS_VERBOSITY``)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if transformers or "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
