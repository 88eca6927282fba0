"""A plug-in whose loss returns one value per example instead of a scalar."""

from harness.spec.methods import register_method

register_method(
    "per-example", description="no scalar", loss=lambda s, t, m, c: (s.cls[:, -1] - t.cls[:, -1]).pow(2).sum(-1)
)
