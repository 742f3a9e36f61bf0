"""The admin API for keys (`/v1/admin/keys`), on a real gateway process; no engine needed.

Keys made here are then used against the gateway, so the limits set through the API are shown to
be the ones the request path enforces (403 for modes and effort, 429 for the budget, 401 revoked).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.scripted_engine import ScriptedEngine
from tests.support import GatewayProcess, query_db, start_gateway

pytestmark = pytest.mark.slow

ADMIN_SECRET = "admin-secret-for-tests"
CHAT = {
    "model": "thinkgate-arith",
    "messages": [{"role": "user", "content": "What is 2 + 2?"}],
    "max_tokens": 8,
}


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    """A scripted engine that notes every request it gets: everything here is decided before it."""
    scripted = ScriptedEngine().start()
    yield scripted
    scripted.stop()


@pytest.fixture(scope="module")
def admin_gateway(
    engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    workdir: Path = tmp_path_factory.mktemp("admin-api")
    with start_gateway(workdir, upstreams=[engine.url], admin_key=ADMIN_SECRET) as gw:
        yield gw


@pytest.fixture()
def admin(admin_gateway: GatewayProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN_SECRET}"}
    with httpx.Client(base_url=admin_gateway.base_url, headers=headers, timeout=30) as http:
        yield http


def as_key(gateway: GatewayProcess, secret: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)


def assert_error(response: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error


def test_create_converts_usd_exactly_and_returns_the_secret_once(admin: httpx.Client) -> None:
    created = admin.post(
        "/v1/admin/keys",
        json={
            "name": "exact",
            "budget": "0.000003",
            "rpm": 7,
            "tpm": 900,
            "modes": ["short"],
            "max_effort": "low",
        },
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["budget_micros"] == 3 and key["spent_micros"] == 0 and key["reserved_micros"] == 0
    assert (key["rpm"], key["tpm"], key["modes"], key["max_effort"]) == (7, 900, ["short"], "low")
    assert key["secret"].startswith(key["prefix"])
    # A JSON number that is not exact in binary floating point still lands on the exact micro-USD.
    number = admin.post("/v1/admin/keys", json={"name": "float", "budget": 0.29}).json()
    assert number["budget_micros"] == 290_000
    listed = admin.get("/v1/admin/keys").json()
    assert listed["object"] == "list"
    by_id = {k["id"]: k for k in listed["data"]}
    assert by_id[key["id"]]["budget_micros"] == 3 and "secret" not in by_id[key["id"]]
    assert admin.get(f"/v1/admin/keys/{number['id']}").json()["budget"] == pytest.approx(0.29)


def test_patch_changes_only_given_fields_and_null_clears(admin: httpx.Client) -> None:
    key = admin.post(
        "/v1/admin/keys", json={"name": "patch", "budget": 1, "rpm": 5, "modes": ["long"]}
    ).json()
    patched = admin.patch(f"/v1/admin/keys/{key['id']}", json={"budget": "2.5", "rpm": None})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["budget_micros"] == 2_500_000
    assert body["rpm"] is None
    assert body["modes"] == ["long"]  # not mentioned: unchanged
    cleared = admin.patch(f"/v1/admin/keys/{key['id']}", json={"budget": None, "modes": None}).json()
    assert cleared["budget_micros"] is None and cleared["modes"] is None


def test_bad_bodies_are_400_naming_the_field(admin: httpx.Client) -> None:
    assert_error(
        admin.post("/v1/admin/keys", json={"name": "x", "budget": "0.0000001"}),
        400,
        "invalid_value",
        "budget",
    )
    assert_error(
        admin.post("/v1/admin/keys", json={"name": "x", "budget": -1}), 400, "invalid_value", "budget"
    )
    assert_error(admin.post("/v1/admin/keys", json={"name": "x", "modes": ["medium"]}), 400, "invalid_value")
    assert_error(admin.post("/v1/admin/keys", json={"name": "x", "rpm": 0}), 400, "invalid_value", "rpm")
    assert_error(
        admin.post("/v1/admin/keys", json={"name": "x", "colour": 1}), 400, "invalid_value", "colour"
    )
    assert_error(admin.patch("/v1/admin/keys/key_nope", json={"rpm": 3}), 404, "key_not_found")
    assert_error(admin.delete("/v1/admin/keys/key_nope"), 404, "key_not_found")


def test_only_admins_reach_the_admin_api(admin: httpx.Client, admin_gateway: GatewayProcess) -> None:
    plain = admin.post("/v1/admin/keys", json={"name": "plain"}).json()
    with as_key(admin_gateway, plain["secret"]) as client:
        assert_error(client.get("/v1/admin/keys"), 403, "permission_denied")
        assert_error(client.post("/v1/admin/keys", json={"name": "sneaky"}), 403, "permission_denied")
    with httpx.Client(base_url=admin_gateway.base_url, timeout=30) as anonymous:
        assert_error(anonymous.get("/v1/admin/keys"), 401, "invalid_api_key")
    boss = admin.post("/v1/admin/keys", json={"name": "second admin", "admin": True}).json()
    with as_key(admin_gateway, boss["secret"]) as client:
        assert client.get("/v1/admin/keys").status_code == 200


def test_revoked_key_is_refused(admin: httpx.Client, admin_gateway: GatewayProcess) -> None:
    key = admin.post("/v1/admin/keys", json={"name": "short-lived"}).json()
    with as_key(admin_gateway, key["secret"]) as client:
        assert client.get("/v1/balance").status_code == 200
        revoked = admin.delete(f"/v1/admin/keys/{key['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        assert_error(client.get("/v1/balance"), 401, "invalid_api_key")
        assert_error(client.post("/v1/chat/completions", json=CHAT), 401, "invalid_api_key")


def test_limits_set_through_the_api_are_enforced_before_the_engine(
    admin: httpx.Client, admin_gateway: GatewayProcess, engine: ScriptedEngine
) -> None:
    """The engine notes every request it gets: none proves it was never asked."""
    asked = len(engine.requests)
    short_only = admin.post("/v1/admin/keys", json={"name": "short only", "modes": ["short"]}).json()
    low_effort = admin.post("/v1/admin/keys", json={"name": "low effort", "max_effort": "low"}).json()
    broke = admin.post("/v1/admin/keys", json={"name": "broke", "budget": "0.000001"}).json()
    with as_key(admin_gateway, short_only["secret"]) as client:
        assert_error(
            client.post("/v1/chat/completions", json={**CHAT, "reasoning_mode": "long"}),
            403,
            "permission_denied",
            "reasoning_mode",
        )
        assert_error(
            client.post("/v1/chat/completions", json={**CHAT, "model": "thinkgate-arith:long"}),
            403,
            "permission_denied",
        )
    with as_key(admin_gateway, low_effort["secret"]) as client:
        assert_error(
            client.post("/v1/chat/completions", json={**CHAT, "reasoning_effort": "high"}),
            403,
            "permission_denied",
            "reasoning_effort",
        )
    with as_key(admin_gateway, broke["secret"]) as client:
        refused = client.post("/v1/chat/completions", json=CHAT)
        assert_error(refused, 429, "insufficient_quota")
        assert refused.json()["error"]["type"] == "insufficient_quota"
        balance = client.get("/v1/balance").json()
        assert balance["spent_micros"] == 0 and balance["reserved_micros"] == 0
    assert len(engine.requests) == asked
    records = query_db(
        admin_gateway.database_url,
        "SELECT key_id, status, error, cost_micros FROM usage_records WHERE key_id IN (:a, :b, :c)",
        a=short_only["id"],
        b=low_effort["id"],
        c=broke["id"],
    )
    assert sorted((r["key_id"], r["status"]) for r in records) == sorted(
        [(short_only["id"], "rejected")] * 2 + [(low_effort["id"], "rejected"), (broke["id"], "rejected")]
    )
    assert all(r["cost_micros"] == 0 and r["error"] for r in records)


def test_openapi_documents_the_admin_routes(admin_gateway: GatewayProcess) -> None:
    schema = httpx.get(f"{admin_gateway.base_url}/openapi.json", timeout=30).json()
    paths = schema["paths"]
    assert {"post", "get"} <= set(paths["/v1/admin/keys"])
    assert {"get", "patch", "delete"} <= set(paths["/v1/admin/keys/{key_id}"])
    create = paths["/v1/admin/keys"]["post"]
    assert "201" in create["responses"] and "422" not in create["responses"]
    assert create["responses"]["403"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorResponse"
    )
    key_schema = schema["components"]["schemas"]["KeyCreate"]["properties"]
    assert {"name", "budget", "rpm", "tpm", "modes", "max_effort", "admin"} <= set(key_schema)
