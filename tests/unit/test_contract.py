"""relay.contract names every setting the relay reads, and nothing else."""

import re

import pytest

from relay import contract
from relay.config import Settings

pytestmark = pytest.mark.unit


def contract_env_names() -> set[str]:
    """Every environment variable name relay.contract spells (whatever its constant's name)."""
    return {
        value
        for name, value in vars(contract).items()
        if name != "ENV_PREFIX" and isinstance(value, str) and re.fullmatch(r"RELAY_[A-Z_]+", value)
    }


def test_contract_names_exactly_the_settings_the_relay_reads() -> None:
    prefix = Settings.model_config["env_prefix"]
    assert prefix == contract.ENV_PREFIX
    read = {f"{prefix}{name}".upper() for name in Settings.model_fields}
    named = contract_env_names()
    assert read - named == set(), "settings missing from relay.contract"
    assert named - read == set(), "relay.contract names a variable the relay does not read"


def test_the_load_report_key_and_its_pattern_agree() -> None:
    key = contract.load_report_key("relay-0")
    assert key.startswith(contract.LOAD_REPORT_KEY_PREFIX) and key.endswith("relay-0")
    assert re.fullmatch(contract.LOAD_REPORT_KEY_PATTERN.replace("*", ".*"), key)
