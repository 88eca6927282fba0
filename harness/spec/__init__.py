"""Layer 1, what a study is, as data (torch-free, tested): the task table, the method registry, the study file.

=============  ==============================================================
``tasks``      ``TASKS``: GLUE's tasks, labels, eval splits; a split as texts and labels
``metrics``    GLUE's metrics
``methods``    ``METHODS``: the KD methods (``register_method``, the one call) and their layer mappings
``plugins``    method plug-ins: a study file's ``plugins:``, the ``alp_kd.methods`` entry points
``config``     ``StudyConfig``: typed, validated study files; the grids
=============  ==============================================================
"""

from harness.util.lazy import public_face

__getattr__, __all__ = public_face(
    __name__,
    {
        "TASKS": "tasks",
        "get_task": "tasks",
        "compute_metrics": "metrics",
        "METHODS": "methods",
        "get_method": "methods",
        "register_method": "methods",
        "StudyConfig": "config",
        "load_study": "config",
        "parse_study": "config",
        "grid_points": "config",
    },
)
