"""Layer 2, the examples: GLUE files or the hub, the holdout slice, tokenised batches.

=============  ==============================================================
``loading``    the official TSV layout or ``datasets``; where the data lives
``holdout``    the slice of train held out for unbiased selection
``encoding``   tokenising a split once (``EncodedSplit``)
=============  ==============================================================
"""

from harness.util.lazy import public_face

__getattr__, __all__ = public_face(
    __name__, {"resolve_data_dir": "loading", "load_split": "loading", "EncodedSplit": "encoding"}
)
