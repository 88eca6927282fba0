"""Published scores to print beside a sweep's own: ``run_study.py report --reference FILE``.

The file is a YAML list of entries ``{method, task, metric, value, source}``: ``value`` in percent,
``metric`` one of the task's GLUE metrics (``split.metric`` for MNLI, e.g. ``dev_matched.accuracy``),
``source`` the paper and table. The report shows them as rows marked "(published)". Every problem
in the file is a one-line :class:`~harness.util.errors.HarnessError` naming the entry.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from harness.spec.methods import METHODS
from harness.spec.tasks import get_task
from harness.util.errors import HarnessError

REFERENCE_KEYS = ("method", "task", "metric", "value", "source")


def load_reference(path: Path) -> list[dict]:
    """Read and validate a YAML list of published scores; every problem is a one-line HarnessError."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise HarnessError(f"cannot read reference file {str(path)!r}: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise HarnessError(f"reference file {str(path)!r} is not valid YAML{where}") from None
    if not isinstance(data, list) or not data:
        raise HarnessError(
            f"reference file {str(path)!r}: expected a non-empty list of entries with keys {', '.join(REFERENCE_KEYS)}"
        )
    entries, seen = [], set()
    for index, entry in enumerate(data, 1):
        where = f"reference file {str(path)!r}, entry {index}"
        if not isinstance(entry, dict):
            raise HarnessError(f"{where}: expected a mapping with keys {', '.join(REFERENCE_KEYS)}")
        if set(entry) != set(REFERENCE_KEYS):
            missing, unknown = sorted(set(REFERENCE_KEYS) - set(entry)), sorted(set(entry) - set(REFERENCE_KEYS))
            raise HarnessError(
                f"{where}: "
                + "; ".join(
                    ([f"missing {', '.join(missing)}"] if missing else [])
                    + ([f"unknown key {', '.join(unknown)}"] if unknown else [])
                )
            )
        method, task, metric, value, source = (entry[k] for k in REFERENCE_KEYS)
        if method not in METHODS and method != "teacher":
            raise HarnessError(f"{where}: unknown method {method!r} (allowed: teacher, {', '.join(METHODS)})")
        try:
            spec = get_task(str(task))
        except HarnessError as error:
            raise HarnessError(f"{where}: {error}") from None
        if metric not in spec.component_keys:
            raise HarnessError(
                f"{where}: {spec.name} has no metric {metric!r} (allowed: {', '.join(spec.component_keys)})"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not 1 < abs(value) <= 100
        ):
            raise HarnessError(f"{where}: value must be a percentage in (1, 100] (e.g. 91.3), got {value!r}")
        if not isinstance(source, str) or not source.strip():
            raise HarnessError(f"{where}: source must be a non-empty text naming the paper and table")
        key = (method, spec.name, metric, source.strip())
        if key in seen:
            raise HarnessError(f"{where}: {method} {spec.name} {metric} from {source!r} is listed twice")
        seen.add(key)
        entries.append(
            {"method": method, "task": spec.name, "metric": metric, "value": float(value), "source": source.strip()}
        )
    return entries
