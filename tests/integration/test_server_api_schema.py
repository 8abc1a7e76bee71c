"""Property-based tests of every server API route, generated from the live OpenAPI
schema by schemathesis (issue 15: bad input): no 5xx but 503, every answer matches the
schema, every error body is the documented ApiError."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from relay.api import models
from support.processes import RedisProcess, RelayProcess

pytestmark = pytest.mark.integration

KEY = "k" * 40
ROOMS = '[{"match": "lobby:*", "presence": true}, {"match": "pos:*", "policy": "volatile"}]'


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    workdir: Path = tmp_path_factory.mktemp("schema")
    redis = RedisProcess(workdir).start()
    env = {
        "RELAY_REDIS_URLS": redis.url,
        "RELAY_AUTH": "none",
        "RELAY_API_KEYS": KEY,
        "RELAY_ROOMS": ROOMS,
    }
    relay = RelayProcess(workdir, env, "schema").start()
    yield relay
    relay.kill()
    redis.stop()


def test_every_route_answers_bad_input_with_the_documented_error(pod: RelayProcess) -> None:
    # schemathesis' pytest plugin predates pytest 9; its engine is driven directly here.
    schema = schemathesis.openapi.from_url(pod.admin + "/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 11  # every route of relay.api.routes
    for operation in operations:
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]

        @given(
            case=operation.as_strategy(generation_mode=modes[0])
            | operation.as_strategy(generation_mode=modes[1])
        )
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def examples(case: schemathesis.Case) -> None:
            response = case.call_and_validate(
                base_url=pod.admin,
                headers={"x-api-key": KEY},
                checks=[
                    checks.not_a_server_error,
                    checks.status_code_conformance,
                    checks.content_type_conformance,
                    checks.response_schema_conformance,
                ],
            )
            if response.status_code >= 400:
                models.ApiError.model_validate_json(response.content)

        examples()
