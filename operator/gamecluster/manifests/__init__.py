"""Builders of child manifests: pure functions from a parsed spec to plain dicts."""
