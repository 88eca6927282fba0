"""Layer 5, commands around a sweep: export a student, size a sweep, show its status.

============  ==============================================================
``export``    a trial's student as a Hugging Face folder (and GLUE submission files)
``plan``      grid sizes, trainings after sharing, time and disk, before anything runs
``status``    what a database holds, without torch
``snapshot``  a SQLite database as one xz file and back (the offline example's committed database)
============  ==============================================================
"""

from harness.util.lazy import public_face

__getattr__, __all__ = public_face(__name__, {"export": "export", "plan_lines": "plan", "study_status": "status"})
