"""Layer 4, the sweep: claims turned into trials, shared points, TPE, confirmations, worker processes.

===============  ==============================================================
``driver``       ``Runner``: grid claims, shared points
``studies``      a method's Optuna study: opened with its fingerprint, pruner and teacher checks
``trial``        one trial: stored record, reported epoch, predictions, ``reproduce``
``sharing``      which points are the same computation; the run plan
``copies``       trials that copy a shared run's outcome
``settle``       trials of dead workers; points whose workers keep dying
``tpe``          the TPE loops (real sweeps and the sweep-cost replay)
``confirm``      seed confirmations of the best configurations
``workers``      ``run --workers K`` processes
``slurm``        the SLURM launcher: a prepare job and a worker array
``tensorboard``  one TensorBoard run per trial, from what the trial stores
===============  ==============================================================
"""

from harness.util.lazy import public_face

__getattr__, __all__ = public_face(
    __name__, {"Runner": "driver", "RunOptions": "driver", "confirm_studies": "confirm", "reproduce": "trial"}
)
