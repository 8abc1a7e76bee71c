"""The operator's entrypoint: the registry it runs with logs kopf in (found by the e2e tests:
a registry of our own has none of kopf's default login handlers, and kopf then stops with
"Ran out of valid credentials" before watching anything)."""

import kopf
import pytest
from kopf._core.intents.causes import Activity  # no public name for it

from gamecluster.main import main, operator_registry
from gamecluster.settings import OperatorSettings

pytestmark = pytest.mark.unit


def test_registry_logs_in_like_the_api_client() -> None:
    registry = operator_registry(OperatorSettings(relay_image="gamecluster:test"))
    logins = registry._activities.get_handlers(activity=Activity.AUTHENTICATION)
    assert [handler.fn for handler in logins] == [kopf.login_via_client]


def test_liveness_endpoint_listens_on_all_addresses_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GAMECLUSTER_LIVENESS_HOST", raising=False)
    assert OperatorSettings(relay_image="x").liveness_host == "0.0.0.0"
    monkeypatch.setenv("GAMECLUSTER_LIVENESS_HOST", "127.0.0.1")
    assert OperatorSettings(relay_image="x").liveness_host == "127.0.0.1"


def test_help_names_every_setting_and_exits_before_connecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The image test (tests/e2e/pods) runs `gamecluster-operator --help` in the built image:
    # it must print and exit 0 without settings or credentials, not start the operator.
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gamecluster-operator")
    assert "GAMECLUSTER_RELAY_IMAGE  (required)" in out
    assert "GAMECLUSTER_LIVENESS_PORT  (default 8080)" in out


def test_unknown_argument_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--bogus"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
