"""The whole API fuzzed from its own OpenAPI schema (schemathesis): no request,
valid or not, gets a 5xx.

The caller is alice, a plain member of team-a (see conftest ``world``): the
fuzzer may make runs and tokens and try every admin route, but never revokes
its own token (DELETE /tokens/{its id} is left out), so every request after
that stays authenticated. Derandomized: the same cases on every run, on
SQLite and on PostgreSQL. 20 cases per operation and mode (valid and invalid
requests) take about 20 s per backend on 2 cores.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.models import ApiToken

# CADDIE_FUZZ_EXAMPLES=200 for a longer run by hand (100 per case took ~2 min per backend).
EXAMPLES_PER_OPERATION = int(os.environ.get("CADDIE_FUZZ_EXAMPLES", "20"))
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def _operations(client: TestClient) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    # The web pages (HTML forms, cookies) are not part of the API.
    return [op for op in operations if op.path.startswith("/api/") or op.path == "/healthz"]


def _allowed_hardware(case: schemathesis.Case) -> schemathesis.Case:
    """Hardware is any string to the schema (the allowed list is a setting); a spec whose
    hardware is allowed goes on past that check, to the knob rules and into the database."""
    if isinstance(case.body, dict) and case.body.get("hardware") not in ("H100:8", "cpu"):
        case.body["hardware"] = "H100:8"
    return case


def _fuzz(operation: schemathesis.APIOperation, mode: GenerationMode, headers: dict[str, str], own_token_id: int) -> None:
    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE and operation.method.upper() == "POST" and operation.path.endswith("/runs"):
        strategy = strategy.map(_allowed_hardware)

    @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        assume(not (case.method == "DELETE" and operation.path.endswith("/tokens/{token_id}")
                    and str((case.path_parameters or {}).get("token_id")) == str(own_token_id)))
        case.call_and_validate(headers=headers, checks=[not_a_server_error])

    run()


def test_the_schema_covers_every_api_route(client: TestClient) -> None:
    paths = {op.path for op in _operations(client)}
    assert {"/api/v1/runs", "/api/v1/runs/{run_id}/logs", "/api/v1/tokens/{token_id}", "/api/v1/groups/{key}/export"} <= paths
    config = client.get("/openapi.json").json()["components"]["schemas"]["RunCreate"]["properties"]["config"]
    # The knob rules reach the fuzzer (and the docs): types, bounds and choices, not a bare object.
    assert config["additionalProperties"] is False
    assert config["properties"]["NUM_LAYERS"] == {**config["properties"]["NUM_LAYERS"], "type": "integer", "minimum": 1, "maximum": 64}
    assert config["properties"]["MLP_ACTIVATION"]["enum"] == ["leaky_relu2", "relu2"]
    assert "SEED" not in config["properties"] and "OUTPUT_DIR" not in config["properties"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_no_request_gets_a_server_error(client: TestClient, world, spec, session: Session) -> None:
    own_token_id = session.scalar(select(ApiToken.id).where(ApiToken.user_id == world.user_ids["alice"]))
    headers = world.h("alice")
    # Something to find: runs 1 and 2 (small ids are among the first a fuzzer tries) and their group.
    stored = client.post("/api/v1/runs", json=spec(seeds=[1, 2]), headers=headers)
    assert stored.status_code == 201, stored.text
    failures = []
    for operation in _operations(client):
        for mode in MODES:
            try:
                _fuzz(operation, mode, headers, own_token_id)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.path  # nothing to get wrong: no parameters, no body
            except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them all
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    # The fuzzer's own token still works: it never revoked itself.
    assert client.get("/api/v1/users/me", headers=headers).status_code == 200
