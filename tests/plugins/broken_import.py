"""A plug-in that fails to import."""

raise RuntimeError("plug-in self-test failed\nthe last line: missing_dependency is not installed")
