"""The standing property-based fuzz (item 7): every route of the OpenAPI schema, with numbers at and
past every storage type's limits, against a real gateway in front of the fake engine.

Requests are drawn from `/openapi.json` itself: each field gets values of its type at and past the
limits (0, -1, 2**31-1, 2**31, 2**63-1, 2**63, 10**30, 1e308, NaN, ±Infinity, huge strings, NUL,
deep nesting) and, now and then, a value of any type; unknown fields ride along where the schema
allows them. The properties:

- no 5xx without an engine fault (the fake engine never fails; a 503 only with Retry-After), and
  every error in the OpenAI shape;
- afterwards, for the fuzzing key: no usage record left `open`, `reserved_micros` back to 0, spent
  = the sum of the records' costs, and each completed record's token counts equal what the fake
  engine reported (12 prompt tokens, min(8, the request's bound) generated) and priced as the
  profile says.

The fake engine (bench/fake_engine.py) serves `fuzz-Qwen3`, so the Qwen3 profile applies: both
reasoning modes, reasoning options and budgets are reachable. Derandomized and bounded: the same
examples on every run, a few seconds each.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import ROOT, GatewayProcess, expected_cost, free_port, query_db, start_gateway, wait_http

pytestmark = [
    pytest.mark.slow,
    # The strategies are built from the whole schema: their repr is long, and hypothesis says so.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

MODEL = "fuzz-Qwen3"
TOKENS = 8  # what the fake engine generates per stream, fewer if max_tokens says so
PROMPT_TOKENS = 12  # what it reports for every prompt (bench/fake_engine.py)
DEFAULT_MAX_TOKENS = 8192  # the qwen3 profile's, when a request names no bound
ADMIN = "tg-admin-fuzz-limits"
EXAMPLES = 300

EDGE_INTS = (
    0, 1, -1, 2, 7, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32, 2**53 + 1,
    2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30, -(10**30),
)  # fmt: skip
EDGE_FLOATS = (0.0, -0.0, 0.5, 1.5, 2.0000001, 5e-324, 1e-308, 1e308, -1e308, math.nan, math.inf, -math.inf)
EDGE_STRINGS = (
    "", "a", "\x00", "a\x00b", "\u202e", "😀" * 3, " ", "null", "[]",
    "9999-12-31", "0001-01-01", "10000-01-01", "1e308", "nan", "-inf", str(2**63), str(-(2**63) - 1),
    "' OR 1=1 --", "%s%n", "../..", "key_0000000000000000", "long", "short", "day,model,mode,key",
)  # fmt: skip


def _big(name: str) -> Any:
    """Large values, made when drawn (their repr would swamp hypothesis' reports)."""
    if name == "string":
        return "x" * 5000
    kind, depth = name.split(":")
    value: Any = 1
    for _ in range(int(depth)):
        value = [value] if kind == "list" else {"a": value}
    return value


STRINGS = st.one_of(st.sampled_from(EDGE_STRINGS), st.just("string").map(_big))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.sampled_from(EDGE_INTS), st.sampled_from(EDGE_FLOATS), STRINGS
)
WILD = st.one_of(
    SCALARS,
    st.sampled_from(["list:300", "dict:120", "list:40"]).map(_big),
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.sampled_from(["a", "\x00", "top_k", "x" * 300]), SCALARS, max_size=2),
)
EXTRA_NAMES = st.sampled_from(
    ["top_k", "logit_bias", "presence_penalty", "logprobs", "min_tokens", "repetition_penalty", "x", "\x00"]
)
GOOD_MESSAGES = [{"role": "user", "content": "What is 1 + 2?"}]


def _mostly(
    good: st.SearchStrategy[Any], other: st.SearchStrategy[Any], odds: int = 3
) -> st.SearchStrategy[Any]:
    """`good` `odds` times for one `other`: enough requests get through to the ledger."""
    return st.integers(0, odds).flatmap(lambda i: good if i else other)


@dataclass
class Schema:
    """Hypothesis strategies for the values a schema node describes. `edge=True`: only values at and
    past the limits (the node's own bounds ±1, every storage type's, wrong types); else mostly good
    values (`GOOD`) with edges among them, so that requests also get through to the engine."""

    document: dict[str, Any]

    def strategy(
        self, node: dict[str, Any], name: str | None = None, depth: int = 0, edge: bool = False
    ) -> st.SearchStrategy[Any]:
        node = self.deref(node)
        values = self._values(node, depth, edge)
        good = GOOD.get(name or "")
        return values if good is None or edge else _mostly(good, values, odds=7)

    def deref(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].split("/")[1:]:
                target = target[part]
            node = target
        return node

    def _values(self, node: dict[str, Any], depth: int, edge: bool) -> st.SearchStrategy[Any]:
        choices = node.get("anyOf") or node.get("oneOf")
        if choices:
            if edge:  # the edges of what the field holds, not its null
                choices = [c for c in choices if self.deref(c).get("type") != "null"] or choices
            return st.one_of([self.strategy(choice, depth=depth + 1, edge=edge) for choice in choices])
        if "enum" in node:
            return SCALARS if edge else _mostly(st.sampled_from(node["enum"]), SCALARS)
        kind = node.get("type")
        if kind == "integer":
            near = tuple(int(node[b]) + d for b in ("minimum", "maximum") if b in node for d in (-1, 0, 1))
            edges = st.sampled_from(EDGE_INTS + near)
            return edges if edge else st.one_of(edges, st.integers(-10, 10), WILD)
        if kind == "number":
            edges = st.sampled_from(EDGE_FLOATS + EDGE_INTS)
            return edges if edge else st.one_of(edges, st.floats(allow_nan=True))
        if kind == "string":
            return STRINGS if edge else st.one_of(STRINGS, st.text(max_size=12), WILD)
        if kind == "boolean":
            return SCALARS if edge else _mostly(st.booleans(), SCALARS)
        if kind == "null":
            return st.none()
        if kind == "array":
            if depth >= 6:
                return WILD
            items = self.strategy(node.get("items", {}), depth=depth + 1, edge=edge)
            return st.one_of(st.lists(items, min_size=1 if edge else 0, max_size=3), WILD)
        if kind == "object" or "properties" in node:
            return self._object(node, depth, edge)
        return WILD

    def _object(self, node: dict[str, Any], depth: int, edge: bool) -> st.SearchStrategy[Any]:
        """Mostly a good object with one field at its edges (any field, nested ones too); now and
        then a good one, or every field drawn at once; unknown fields ride along."""
        if depth >= 6:
            return WILD
        properties = node.get("properties", {})
        names = set(node.get("required", []))
        required = {n: self.strategy(s, n, depth + 1) for n, s in properties.items() if n in names}
        optional = {n: self.strategy(s, n, depth + 1) for n, s in properties.items() if n not in names}

        def at_edge(name: str) -> st.SearchStrategy[dict[str, Any]]:
            return self.strategy(properties[name], name, depth + 1, edge=True).map(lambda v: {name: v})

        single: st.SearchStrategy[Any] = st.fixed_dictionaries(required)
        if properties:
            single = st.builds(
                lambda known, one: {**known, **one},
                st.fixed_dictionaries(required),
                st.sampled_from(sorted(properties)).flatmap(at_edge),
            )
        if edge:
            fields = single
        else:
            good = {n: GOOD[n] for n in optional if n in GOOD}
            clean = st.fixed_dictionaries(required, optional=good)
            full = st.fixed_dictionaries(required, optional=optional)
            fields = st.integers(0, 3).flatmap(lambda i: (clean, single, single, full)[i])
        extras = st.dictionaries(EXTRA_NAMES, WILD, min_size=1, max_size=2)
        # Now and then unknown fields: passed through where allowed (their numbers checked), else a 400.
        extras = _mostly(st.just({}), extras, odds=3 if node.get("additionalProperties") is False else 1)
        return st.one_of(
            st.builds(lambda known, extra: {**extra, **known}, fields, extras),
            st.builds(lambda known, extra: {**known, **extra}, fields, extras),  # extras win: wrong types
        )


GOOD: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from([MODEL, f"{MODEL}:long", f"{MODEL}:short"]),
    "messages": st.just(GOOD_MESSAGES),
    "max_tokens": st.one_of(st.integers(1, 12), st.none()),
    "max_completion_tokens": st.none(),
    "name": st.just("made-by-fuzz"),
}


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, str]
    body: Any
    admin: bool
    idempotency_key: str | None
    route: str = ""  # the schema's path, {key_id} and all

    def describe(self) -> str:
        body = json.dumps(self.body, allow_nan=True)
        return f"{self.method} {self.path} params={self.params!r} admin={self.admin} body={body[:600]}"


def _query_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, allow_nan=True)


def calls(schema: Schema, victim: str) -> st.SearchStrategy[Call]:
    """One request to any operation of the schema."""
    operations = {
        f"{method.upper()} {path}": operation
        for path, item in sorted(schema.document["paths"].items())
        for method, operation in sorted(item.items())
    }

    def for_operation(name: str) -> st.SearchStrategy[Call]:
        method, path = name.split(" ", 1)
        operation = operations[name]
        query_params = {
            p["name"]: p.get("schema", {}) for p in operation.get("parameters", []) if p["in"] == "query"
        }
        params: st.SearchStrategy[dict[str, Any]] = st.just({})
        if query_params:  # mostly one parameter at its edges, else each drawn or not
            one = st.sampled_from(sorted(query_params)).flatmap(
                lambda n: schema.strategy(query_params[n], n, edge=True).map(lambda v: {n: v})
            )
            every = st.fixed_dictionaries(
                {}, optional={n: schema.strategy(s, n) for n, s in query_params.items()}
            )
            params = _mostly(one, every, odds=2)
        has_key_id = any(p["in"] == "path" for p in operation.get("parameters", []))
        key_ids = st.sampled_from(
            [victim, victim, "key_0000000000000000", "x" * 40, "\x00", "key_\x00", "é", "%2e%2e"]
        )
        content = operation.get("requestBody", {}).get("content", {}).get("application/json")
        body = schema.strategy(content["schema"]) if content else st.none()
        if content:
            body = st.integers(0, 9).flatmap(lambda i, b=body: b if i else WILD)
        admin_only = path.startswith("/v1/admin")
        return st.builds(
            lambda params, key_id, body, admin, idempotency: Call(
                method,
                path.replace("{key_id}", quote(key_id, safe="")) if has_key_id else path,
                {n: v for n, raw in params.items() if (v := _query_value(raw)) is not None},
                body,
                admin_only or (admin and path != "/v1/chat/completions"),
                idempotency if path == "/v1/chat/completions" else None,
                path,
            ),
            params,
            key_ids,
            body,
            st.booleans(),
            st.sampled_from([None, None, None, None, "fuzz-1", "fuzz-2", "i" * 201]),
        )

    # The chat route is the one that reaches the ledger and the engine: drawn as often as the rest.
    names = sorted(operations)
    return st.sampled_from(names + ["POST /v1/chat/completions"] * (len(names) - 1)).flatmap(for_operation)


@dataclass
class Fuzz:
    gateway: GatewayProcess
    secret: str
    key_id: str
    bounds: dict[str, int] = field(default_factory=dict)  # request id -> the bound its request named
    statuses: dict[int, int] = field(default_factory=dict)
    routes: dict[str, dict[int, int]] = field(default_factory=dict)  # "METHOD /path" -> status -> count

    def send(self, call: Call) -> None:
        secret = ADMIN if call.admin else self.secret
        headers = {"Authorization": f"Bearer {secret}"}
        if call.idempotency_key:
            headers["Idempotency-Key"] = call.idempotency_key
        content = None
        if call.body is not None or call.method in ("POST", "PATCH"):
            content = json.dumps(call.body, allow_nan=True).encode()
            headers["Content-Type"] = "application/json"
        request = httpx.Request(
            call.method, self.gateway.base_url + call.path, params=call.params, content=content,
            headers=headers,
        )  # fmt: skip
        with httpx.Client(timeout=60) as client:
            response = client.send(request, stream=True)
            try:
                raw = response.read()
            finally:
                response.close()
        status = response.status_code
        self.statuses[status] = self.statuses.get(status, 0) + 1
        route = self.routes.setdefault(f"{call.method} {call.route}", {})
        route[status] = route.get(status, 0) + 1
        where = f"{call.describe()} -> {status} {raw[:400]!r}"
        assert status < 500 or (status == 503 and response.headers.get("retry-after")), where
        if status >= 400:
            body = json.loads(raw)
            error = body["error"]
            assert isinstance(error["message"], str) and isinstance(error["type"], str), where
            if call.path.startswith("/v1/messages"):  # the Anthropic Messages API: Anthropic's shape
                assert body["type"] == "error", where
            else:
                assert {"param", "code"} <= set(error), where
            return
        if call.path == "/v1/chat/completions" and status == 200:
            self._completed(call, response, raw, where)

    def _completed(self, call: Call, response: httpx.Response, raw: bytes, where: str) -> None:
        body = call.body
        request_id = response.headers["x-request-id"]
        if response.headers["content-type"].startswith("text/event-stream"):
            events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
            assert events[-1] == "[DONE]", where
            assert not any('"error"' in event[:20] for event in events), where  # no engine fault
        bound = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        self.bounds.setdefault(request_id, bound)  # a replay keeps the bound of its first request


@pytest.fixture(scope="module")
def fuzz_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("fuzz-engine") / "engine.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_engine", "--port", str(port), "--tokens", str(TOKENS),
             "--model", MODEL],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_fuzz(gateway: GatewayProcess) -> Fuzz:
    secret = gateway.create_key("fuzz", "--budget", "1000", "--rpm", "1000000", "--tpm", str(2**31 - 1))
    victim = gateway.create_key("victim")
    del victim
    [fuzz_key] = query_db(gateway.database_url, "SELECT id FROM api_keys WHERE name = 'fuzz'")
    [victim_key] = query_db(gateway.database_url, "SELECT id FROM api_keys WHERE name = 'victim'")
    fuzz = Fuzz(gateway, secret, str(fuzz_key["id"]))
    document = httpx.get(f"{gateway.base_url}/openapi.json", timeout=30).json()
    schema = Schema(document)
    # Requests that must get through, whatever the draw: the ledger check needs completed records.
    for body in (
        {"model": MODEL, "messages": GOOD_MESSAGES, "max_tokens": 3},
        {"model": f"{MODEL}:long", "messages": GOOD_MESSAGES, "stream": True},
        {"model": MODEL, "messages": GOOD_MESSAGES, "seed": 2**63 - 1, "max_completion_tokens": 2**31 - 1},
    ):
        fuzz.send(Call("POST", "/v1/chat/completions", {}, body, False, None, "/v1/chat/completions"))

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(call=calls(schema, str(victim_key["id"])))
    def one_request(call: Call) -> None:
        fuzz.send(call)

    one_request()
    return fuzz


def check_ledger(fuzz: Fuzz) -> None:
    url = fuzz.gateway.database_url
    deadline = time.monotonic() + 10
    while True:  # settlement runs as the response ends: give the last one a moment
        records = query_db(url, "SELECT * FROM usage_records WHERE key_id = :k", k=fuzz.key_id)
        [key] = query_db(
            url, "SELECT spent_micros, reserved_micros FROM api_keys WHERE id = :k", k=fuzz.key_id
        )
        if (all(r["status"] != "open" for r in records) and key["reserved_micros"] == 0) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.1)
    assert [r["id"] for r in records if r["status"] == "open"] == []
    assert key["reserved_micros"] == 0
    assert key["spent_micros"] == sum(int(r["cost_micros"]) for r in records)
    assert {r["status"] for r in records} <= {"completed", "length", "rejected"}, {
        r["status"] for r in records
    }
    completed = [r for r in records if r["status"] in ("completed", "length")]
    assert len(completed) >= 3 and set(fuzz.bounds) <= {r["id"] for r in completed}
    for record in completed:
        generated = min(TOKENS, fuzz.bounds.get(str(record["id"]), TOKENS))
        assert record["prompt_tokens"] == PROMPT_TOKENS, record
        assert record["completion_tokens"] == generated, (record, fuzz.bounds.get(str(record["id"])))
        assert record["reasoning_tokens"] + record["answer_tokens"] == generated, record
        assert record["cost_micros"] == expected_cost(record), record
    for record in records:
        if record["status"] == "rejected":
            assert record["cost_micros"] == 0 and record["completion_tokens"] == 0, record
    assert "unhandled error" not in fuzz.gateway.log()


def _fuzz_behind(gateway_factory: Callable[[], Any]) -> Fuzz:
    with gateway_factory() as gateway:
        fuzz = run_fuzz(gateway)
        check_ledger(fuzz)
    return fuzz


def test_fuzz_every_route_at_the_storage_limits_sqlite(fuzz_engine: str, tmp_path: Path) -> None:
    fuzz = _fuzz_behind(
        lambda: start_gateway(tmp_path, upstreams=[fuzz_engine], env={"THINKGATE_ADMIN_KEY": ADMIN})
    )
    print(f"statuses {fuzz.statuses}; by route {fuzz.routes}")
    assert fuzz.statuses.get(200, 0) >= 20 and fuzz.statuses.get(400, 0) >= 50, fuzz.statuses


@pytest.mark.postgres
def test_fuzz_every_route_at_the_storage_limits_postgres(
    fuzz_engine: str, postgres_url: str, tmp_path: Path
) -> None:
    """The same on PostgreSQL, where INTEGER is 32-bit and text refuses NUL."""
    fuzz = _fuzz_behind(
        lambda: start_gateway(
            tmp_path,
            upstreams=[fuzz_engine],
            database_url=postgres_url,
            env={"THINKGATE_ADMIN_KEY": ADMIN},
        )
    )
    assert fuzz.statuses.get(200, 0) >= 20, fuzz.statuses
