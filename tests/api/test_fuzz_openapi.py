"""Property-based fuzzing of every route in the gateway's own OpenAPI schema (schemathesis).

Properties: no 5xx, no hang, every error OpenAI-shaped (Anthropic-shaped on /v1/messages), and the
schema tells the truth about which status codes a route returns. The key has a tiny budget, so
generated requests that would make the engine write long answers end in a 429 quickly instead of
minutes of generation.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support import GatewayProcess

pytestmark = [pytest.mark.engine, pytest.mark.slow]

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def fuzz_key(gateway: GatewayProcess) -> str:
    return gateway.create_key("fuzz", "--budget", "0.0005")


def check_case(case: schemathesis.Case, base_url: str, key: str) -> None:
    response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    where = f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}"
    assert response.status_code < 500 or response.status_code == 503, where
    assert response.status_code != 422, "OpenAI routes answer 400, never 422"
    if response.status_code >= 400 and case.path.startswith("/v1/messages"):  # Anthropic's shape there
        body = response.json()
        assert body["type"] == "error" and body["error"]["type"] and body["error"]["message"], where
    elif response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, where
        assert body["error"]["message"], where
    documented = case.operation.definition.raw.get("responses", {})
    assert str(response.status_code) in documented or response.status_code in (401, 403, 404, 413, 429), (
        f"undocumented status: {where}"
    )


def test_every_route_survives_fuzzing(gateway: GatewayProcess, fuzz_key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{gateway.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: schemathesis.Case) -> None:
            check_case(case, gateway.base_url, fuzz_key)

        fuzz()


def test_schema_describes_the_chat_fields(gateway: GatewayProcess) -> None:
    spec = httpx.get(f"{gateway.base_url}/openapi.json").json()
    request = spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    for name in (
        "model",
        "messages",
        "stream",
        "max_completion_tokens",
        "reasoning_mode",
        "reasoning_effort",
        "reasoning",
        "thinking",
        "chat_template_kwargs",
        "include_reasoning",
        "stream_options",
    ):
        assert name in request, name
    assert "422" not in spec["paths"]["/v1/chat/completions"]["post"]["responses"]
