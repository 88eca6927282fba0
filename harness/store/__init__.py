"""Layer 2, the one database (torch-free, tested): Optuna's tables and ours, claims, URLs, retries, a server.

=============  ==============================================================
``storage``    ``Storage``: our tables (points, results, predictions) beside Optuna's
``claims``     a worker's claim on a grid point and its heartbeat
``urls``       storage URLs: parsed, checked, printed without passwords
``retry``      transient database errors retried (a PostgreSQL restart)
``postgres``   a user-space PostgreSQL server in a folder (``db start|stop|url``)
=============  ==============================================================
"""

from harness.util.lazy import public_face

__getattr__, __all__ = public_face(__name__, {"Storage": "storage", "parse_url": "urls", "default_storage": "urls"})
