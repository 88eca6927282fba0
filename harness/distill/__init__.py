"""Layer 3, distillation itself: losses, models, the training loop, the teacher, one experiment's data.

===============  ==============================================================
``losses``       every loss as a pure tensor function; ``InterLayerLoss``
``method_loss``  a registered method's own term (built-in or plug-in) from its declaration; ``States``
``models``       teachers and students: where they come from, how they are built
``last_layer``   the top layer computed for [CLS] only, where nothing reads its other positions
``device``       CUDA or CPU, autocast and precision, the GPU arch check, deterministic kernels
``batches``      length-grouped batches, dynamic padding, prefetching on a background thread
``steplog``      the step log: loss terms read once per window
``train``        the training loop (autocast, checkpoints that resume exactly)
``teacher``      the fine-tuned teacher and its output cache
``teacher_checks``  a teacher used as it is: head, label names, chance
``experiment``   one study's data, teacher and α probe; runs a trial
===============  ==============================================================
"""

from harness.util.lazy import public_face

__getattr__, __all__ = public_face(
    __name__,
    {
        "Experiment": "experiment",
        "InterLayerLoss": "losses",
        "MethodLoss": "method_loss",
        "States": "method_loss",
        "build_student": "models",
        "Hyper": "train",
    },
)
