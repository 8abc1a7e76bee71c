"""Read one sample out of a Prometheus exposition, the way Prometheus would parse it.

Tests assert on values, never on substrings of the text: `"x_total 0.0" not in text`
also holds when `x_total` was renamed or dropped. A sample that is not there is an error
that lists what is, so a renamed metric fails the test instead of passing it.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample in `text`: (sample name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of the sample `name` with exactly `labels` (a counter's name ends in _total).

    Raises KeyError naming the samples that do exist when there is no such sample.
    """
    found = samples(text)
    key = (name, frozenset((labels or {}).items()))
    if key not in found:
        same_name = sorted(str(dict(lbl)) for n, lbl in found if n == name)
        known = same_name or sorted({n for n, _ in found})
        raise KeyError(f"no sample {name}{labels or ''} in the exposition; there is: {known}")
    return found[key]
