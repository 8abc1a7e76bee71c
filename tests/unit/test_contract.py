import re

from relay import contract


def test_every_env_name_carries_the_relay_prefix() -> None:
    names = [v for k, v in vars(contract).items() if k.startswith("ENV_") and k != "ENV_PREFIX"]
    assert names
    for name in names:
        assert re.fullmatch(r"RELAY_[A-Z_]+", name), name
