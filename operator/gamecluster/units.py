"""Kubernetes resource quantities as numbers (the CRD's quantity pattern, in bytes)."""

import re
from decimal import Decimal
from typing import Final

_SUFFIX: Final[dict[str, int | Decimal]] = {
    "": 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "m": Decimal("0.001"),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
}
_QUANTITY: Final = re.compile(
    r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)([KMGTPE]i|[numkMGTPE])?$"
)


def quantity_bytes(quantity: int | str) -> int:
    """``256Mi`` -> 268435456; ValueError for what is not a quantity."""
    if isinstance(quantity, int):
        return quantity
    match = _QUANTITY.match(quantity.strip())
    if match is None:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity")
    number, suffix = match.groups()
    return int(Decimal(number) * Decimal(_SUFFIX[suffix or ""]))
