"""A plug-in that declares a teacher state no teacher gives."""

from harness.spec.methods import register_method

register_method("needs-values", description="values", states=("value_vectors",), loss=lambda s, t, m, c: s.cls.sum())
