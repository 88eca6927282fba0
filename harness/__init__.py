"""ALP-KD benchmarking harness: Optuna sweeps of knowledge-distillation methods on GLUE."""

__version__ = "0.1.0"
