"""Fixtures of the chart tier (helpers live in chart_support)."""

from __future__ import annotations

from collections.abc import Iterator

import helm_python as helm
import pytest
from chart_support import CHART_DIR


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    """The chart as Helm loads it (Chart.yaml, values, schema, templates, crds/)."""
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded
