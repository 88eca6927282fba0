"""Layer 0, utilities every other package may use: errors, atomic files, fingerprints, quiet logs, signals.

=============  ==============================================================
``errors``     ``HarnessError``: the one-line error family for user input
``files``      atomic writes and renames, file locks, disk-space checks
``hashing``    stable fingerprints of configs and files (``sha256_file``)
``quiet``      libraries' log noise turned down
``signals``    SIGINT/SIGTERM recorded and acted on at the next step
``lazy``       the lazy public faces of the packages above this one
=============  ==============================================================
"""

from harness.util.lazy import public_face

__getattr__, __all__ = public_face(
    __name__,
    {"HarnessError": "errors", "sha256_file": "hashing", "fingerprint": "hashing", "quiet_libraries": "quiet"},
)
