"""Item 7, numbers past what the storage and the engine can hold: a 400 naming the field, never a 500.

Each case was a 500 before (an OverflowError in SQLite, in date arithmetic or in the JSON encoder of
the upstream body; a pydantic error escaping a route), or sits right at a limit and must pass. The
limits: token counts and rpm/tpm are INTEGER columns (32-bit on PostgreSQL), money and every other
integer 64-bit, times from 0001-01-01 to 9999-12-31. The same bounds hold on the CLI.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.metering.queries import MAX_TIME, MIN_TIME, QueryError, decode_cursor, parse_bound, parse_since
from tests.support import ROOT, THINKGATE, GatewayProcess, start_gateway

ADMIN = "tg-admin-storage-limits"
MODEL = "fake-reasoner"
MESSAGES = [{"role": "user", "content": "What is 1 + 2?"}]
BIG = 10**30


@pytest.fixture(scope="module")
def gateway(fake_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with start_gateway(
        tmp_path_factory.mktemp("limits"), upstreams=[fake_engine], env={"THINKGATE_ADMIN_KEY": ADMIN}
    ) as gateway:
        gateway.api_key = gateway.create_key("limits", "--budget", "100")
        yield gateway
    assert "unhandled error" not in gateway.log()


def _chat(gateway: GatewayProcess, content: bytes | None = None, **fields: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {gateway.api_key}", "Content-Type": "application/json"}
    url = f"{gateway.base_url}/v1/chat/completions"
    if content is not None:
        return httpx.post(url, content=content, headers=headers, timeout=30)
    return httpx.post(url, json={"model": MODEL, "messages": MESSAGES, **fields}, headers=headers, timeout=30)


def _assert_400(response: httpx.Response, param: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert param in error["message"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": BIG}, "max_tokens"),
        ({"max_tokens": 2**31}, "max_tokens"),
        ({"max_completion_tokens": 2**63}, "max_completion_tokens"),
        ({"seed": 2**70}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"n": 2**63}, "n"),
        ({"reasoning": {"max_tokens": 2**31}}, "reasoning.max_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": BIG}}, "thinking.budget_tokens"),
        # Fields the gateway does not know pass through to the engine: their JSON must be writable.
        ({"top_k": BIG}, "top_k"),
        ({"logit_bias": {"42": 2**64}}, "logit_bias.42"),
        ({"chat_template_kwargs": {"depth": -(2**63) - 1}}, "chat_template_kwargs.depth"),
        ({"messages": [{**MESSAGES[0], "weight": [1, BIG]}]}, "messages[0].weight[1]"),
    ],
)
def test_chat_numbers_past_the_limits_are_400(
    gateway: GatewayProcess, fields: dict[str, Any], param: str
) -> None:
    _assert_400(_chat(gateway, **fields), param)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ('"top_k": NaN', "top_k"),
        ('"x": {"y": Infinity}', "x.y"),
        ('"presence_penalty": -1e400', "presence_penalty"),
    ],
)
def test_numbers_json_cannot_carry_are_400(gateway: GatewayProcess, extra: str, param: str) -> None:
    body = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "hi"}}], {extra}}}'
    _assert_400(_chat(gateway, content=body.encode()), param)


@pytest.mark.slow
def test_chat_numbers_at_the_limits_pass(gateway: GatewayProcess) -> None:
    for seed in (2**63 - 1, -(2**63)):
        response = _chat(gateway, seed=seed, max_tokens=3, top_k=2**63 - 1)
        assert response.status_code == 200, response.text
    # The largest bound is valid: fitted to the model's context, not refused.
    response = _chat(gateway, max_tokens=2**31 - 1)
    assert response.status_code == 200, response.text
    assert response.headers["x-thinkgate-max-tokens"].startswith("fitted to ")


@pytest.mark.slow
def test_token_count_checks_the_chat_fields(gateway: GatewayProcess) -> None:
    headers = {"Authorization": f"Bearer {gateway.api_key}"}
    url = f"{gateway.base_url}/v1/tokenizers/estimate-token-count"
    for fields, param in (({"n": 0}, "n"), ({"max_tokens": BIG}, "max_tokens"), ({"seed": 2**64}, "seed")):
        body = {"model": MODEL, "messages": MESSAGES, **fields}
        _assert_400(httpx.post(url, json=body, headers=headers, timeout=30), param)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/v1/usage", {"end": "1e300"}, "end"),
        ("/v1/usage", {"end": "nan"}, "end"),
        ("/v1/usage", {"start": "-inf"}, "start"),
        ("/v1/usage", {"start": str(-(10**20))}, "start"),
        ("/v1/usage", {"end": str(2**63)}, "end"),
        ("/v1/usage", {"start": "0001-01-01T00:00:00+05:00"}, "start"),  # before year 1 in UTC
        ("/v1/usage/records", {"limit": str(2**63)}, "limit"),
        ("/v1/usage/records", {"cursor": base64.urlsafe_b64encode(b"nan|x").decode()}, "cursor"),
        ("/v1/usage/records", {"cursor": base64.urlsafe_b64encode(b"1e999|x").decode()}, "cursor"),
        ("/v1/usage/records", {"cursor": base64.urlsafe_b64encode(b"1.0|a\x00b").decode()}, "cursor"),
        ("/v1/usage/records", {"key_id": "key_\x00"}, "key_id"),
    ],
)
def test_usage_query_past_the_limits_is_400(
    gateway: GatewayProcess, path: str, params: dict[str, str], param: str
) -> None:
    response = httpx.get(
        gateway.base_url + path, params=params, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
    )
    _assert_400(response, param)


@pytest.mark.slow
def test_usage_query_at_the_limits_passes(gateway: GatewayProcess) -> None:
    headers = {"Authorization": f"Bearer {gateway.api_key}"}
    for params in (
        {"end": "9999-12-31"},  # a whole day is added to an end date: it used to overflow
        {"start": "0001-01-01", "end": "9999-12-31T23:59:59.999999"},
        {"start": str(MIN_TIME), "end": str(MAX_TIME)},
        {"start": "-1"},
    ):
        for path in ("/v1/usage", "/v1/usage/records"):
            response = httpx.get(gateway.base_url + path, params=params, headers=headers, timeout=30)
            assert response.status_code == 200, (params, response.text)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "fields", "param"),
    [
        ("POST", {"rpm": 10**23}, "rpm"),
        ("POST", {"rpm": 2**31}, "rpm"),
        ("POST", {"rpm": 2**63}, "rpm"),
        ("POST", {"tpm": 2**31}, "tpm"),
        ("POST", {"budget": 1e30}, "budget"),
        ("POST", {"budget": "1e30"}, "budget"),
        ("PATCH", {"rpm": 2**31}, "rpm"),
        ("PATCH", {"tpm": BIG}, "tpm"),
    ],
)
def test_admin_limits_past_the_columns_are_400(
    gateway: GatewayProcess, method: str, fields: dict[str, Any], param: str
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=30) as admin:
        victim = admin.post("/v1/admin/keys", json={"name": "victim"}).json()["id"]
        if method == "POST":
            response = admin.post("/v1/admin/keys", json={"name": "x", **fields})
        else:
            response = admin.patch(f"/v1/admin/keys/{victim}", json=fields)
    _assert_400(response, param)


@pytest.mark.slow
def test_admin_limits_at_the_columns_pass(gateway: GatewayProcess) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    top = 2**31 - 1
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=30) as admin:
        created = admin.post("/v1/admin/keys", json={"name": "top", "rpm": top, "tpm": top, "budget": 10**9})
        assert created.status_code == 201, created.text
        key = admin.get(f"/v1/admin/keys/{created.json()['id']}").json()
        assert (key["rpm"], key["tpm"], key["budget_micros"]) == (top, top, 10**15)


def _cli(gateway: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*THINKGATE, "--database-url", gateway.database_url, *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip


@pytest.mark.slow
def test_the_cli_refuses_limits_past_the_columns(gateway: GatewayProcess) -> None:
    for args, flag in (
        (("keys", "create", "--name", "c", "--rpm", str(10**23)), "--rpm"),
        (("keys", "create", "--name", "c", "--tpm", str(2**31)), "--tpm"),
        (("keys", "create", "--name", "c", "--rpm", "0"), "--rpm"),
        (("keys", "create", "--name", "c", "--budget", "1e30"), "--budget"),
        (("keys", "create", "--name", "c", "--budget", "nan"), "--budget"),
        (("keys", "update", "key_0000000000000000", "--rpm", str(2**31)), "--rpm"),
    ):
        result = _cli(gateway, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert flag in result.stderr and "Traceback" not in result.stderr, result.stderr
    made = _cli(gateway, "keys", "create", "--name", "c", "--rpm", str(2**31 - 1), "--tpm", str(2**31 - 1))
    assert made.returncode == 0, made.stderr


def test_the_cli_and_the_api_share_their_bounds() -> None:
    from app.cli import keys as admin_cli
    from app.metering.prices import PER
    from app.protocols.admin import types as admin

    assert admin_cli.MAX_PER_MINUTE == admin.MAX_PER_MINUTE == 2**31 - 1
    budget_micros = admin.MAX_BUDGET_USD * PER
    assert budget_micros == admin_cli.MAX_BUDGET_MICROS < 2**63


def test_time_bounds_cover_every_date_and_nothing_past() -> None:
    assert parse_bound("9999-12-31", "end", end=True) == MAX_TIME
    assert parse_bound("0001-01-01", "start") == MIN_TIME
    assert parse_bound(" 1700000000.5 ", "start") == 1700000000.5
    for text in ("nan", "inf", "-Infinity", "1e400", str(MAX_TIME + 1), str(MIN_TIME - 1), "x" * 10_000):
        with pytest.raises(QueryError) as raised:
            parse_bound(text, "end", end=True)
        assert raised.value.param == "end" and len(str(raised.value)) < 300
    assert parse_since("100000w") > MIN_TIME  # ~1900 years back: still a date
    for text in ("999999999999w", "9" * 5000 + "d", "1e999"):
        with pytest.raises(QueryError):
            parse_since(text, "--since")
    with pytest.raises(QueryError):
        decode_cursor(base64.urlsafe_b64encode(b"inf|key").decode())


def test_the_engine_timeout_setting_is_a_serve_flag() -> None:
    from app.cli.main import build_parser, settings_from_args

    args = build_parser().parse_args(["serve", "--upstream-header-timeout-s", "7.5"])
    assert settings_from_args(args).upstream_header_timeout_s == 7.5


@pytest.mark.postgres
def test_postgres_refuses_nothing_the_api_lets_through(
    fake_engine: str, postgres_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL INTEGER is 32-bit (rpm 2**31 overflowed it: a 500) and text refuses NUL."""
    with start_gateway(
        tmp_path, upstreams=[fake_engine], database_url=postgres_url, env={"THINKGATE_ADMIN_KEY": ADMIN}
    ) as gateway:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=30) as admin:
            _assert_400(admin.post("/v1/admin/keys", json={"name": "pg", "rpm": 2**31}), "rpm")
            _assert_400(admin.post("/v1/admin/keys", json={"name": "pg", "tpm": 2**31}), "tpm")
            top = admin.post("/v1/admin/keys", json={"name": "pg", "rpm": 2**31 - 1, "tpm": 2**31 - 1})
            assert top.status_code == 201, top.text
            key_id = top.json()["id"]
            _assert_400(admin.patch(f"/v1/admin/keys/{key_id}", json={"rpm": 2**31}), "rpm")
            assert admin.get(f"/v1/admin/keys/{key_id}").json()["rpm"] == 2**31 - 1
            for name in ("\x00", "a\x00b"):
                response = admin.post("/v1/admin/keys", json={"name": name})
                _assert_400(response, "name")
            _assert_400(admin.get("/v1/admin/keys/key_%00"), "key_id")
            _assert_400(admin.get("/v1/usage", params={"key_id": "key_\x00"}), "key_id")
            _assert_400(admin.get("/v1/usage/records", params={"end": "9999-12-32"}), "end")
            assert admin.get("/v1/usage/records", params={"end": "9999-12-31"}).status_code == 200
        secret = top.json()["secret"]
        chat = httpx.post(
            f"{gateway.base_url}/v1/chat/completions",
            json={"model": "\x00" * 300, "messages": MESSAGES, "user": "\x00"},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        )
        assert chat.status_code in (400, 404), chat.text
    assert "unhandled error" not in gateway.log()
