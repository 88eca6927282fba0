"""A plug-in whose name clashes with a built-in method."""

from harness.spec.methods import register_method

register_method("alp", description="a second alp", loss=lambda s, t, m, c: s.cls.sum())
