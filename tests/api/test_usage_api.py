"""Reading usage: `/v1/usage`, `/v1/usage/records`, `/v1/balance`, CSV, and `thinkgate usage`.

The ledger is seeded with random records over three days, two keys, two models and both modes,
written straight into the gateway's database; every total the API and the CLI return is compared
with the same totals computed here from the seeded rows. No engine needed.
"""

from __future__ import annotations

import csv
import io
import random
import sqlite3
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, THINKGATE, GatewayProcess, free_port, start_gateway

pytestmark = pytest.mark.slow

ADMIN_SECRET = "usage-admin-secret"
STATUSES = ("completed", "length", "aborted", "engine_error", "rejected", "interrupted")
SUMS = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "answer_tokens", "cost_micros")


def day_of(created_at: float) -> str:
    return datetime.fromtimestamp(created_at, UTC).strftime("%Y-%m-%d")


class Seeded:
    def __init__(
        self, gateway: GatewayProcess, keys: dict[str, dict[str, Any]], records: list[dict[str, Any]]
    ):
        self.gateway = gateway
        self.keys = keys
        self.records = records

    def client(self, who: str) -> httpx.Client:
        secret = ADMIN_SECRET if who == "admin" else self.keys[who]["secret"]
        return httpx.Client(
            base_url=self.gateway.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
        )

    def expected(
        self,
        group_by: list[str],
        key_id: str | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> dict[tuple[str, ...], dict[str, int]]:
        totals: dict[tuple[str, ...], dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(("requests", *SUMS), 0)
        )
        for record in self.records:
            if key_id is not None and record["key_id"] != key_id:
                continue
            if (start is not None and record["created_at"] < start) or (
                end is not None and record["created_at"] >= end
            ):
                continue
            fields = {
                "day": day_of(record["created_at"]),
                "model": record["model"],
                "mode": record["mode"],
                "key": record["key_id"],
            }
            group = totals[tuple(fields[g] for g in group_by)]
            group["requests"] += 1
            for name in SUMS:
                group[name] += record[name]
        return dict(totals)


def as_groups(rows: list[dict[str, Any]], group_by: list[str]) -> dict[tuple[str, ...], dict[str, int]]:
    names = {"day": "day", "model": "model", "mode": "mode", "key": "key_id"}
    return {
        tuple(str(row[names[g]]) for g in group_by): {n: int(row[n]) for n in ("requests", *SUMS)}
        for row in rows
    }


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    workdir: Path = tmp_path_factory.mktemp("usage-api")
    dead = f"http://127.0.0.1:{free_port()}"
    with start_gateway(workdir, upstreams=[dead], admin_key=ADMIN_SECRET, wait_ready=False) as gw:
        keys = {}
        with httpx.Client(base_url=gw.base_url, headers={"Authorization": f"Bearer {ADMIN_SECRET}"}) as admin:
            for name, budget in (("alice", "5"), ("bob", None)):
                keys[name] = admin.post("/v1/admin/keys", json={"name": name, "budget": budget}).json()
        rng = random.Random(20261129)
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        records = []
        for i in range(90):
            completion = rng.randint(0, 400)
            reasoning = rng.randint(0, completion)
            records.append(
                {
                    "id": f"chatcmpl-seed{i:04d}",
                    "key_id": keys[rng.choice(["alice", "bob"])]["id"],
                    "created_at": midnight - rng.randint(0, 2) * 86_400 + rng.uniform(1, 86_000),
                    "instance_id": "seed",
                    "model": rng.choice(["thinkgate-arith", "other-model"]),
                    "mode": rng.choice(["long", "short"]),
                    "mode_source": "auto",
                    "status": rng.choice(STATUSES),
                    "prompt_tokens": rng.randint(1, 300),
                    "completion_tokens": completion,
                    "reasoning_tokens": reasoning,
                    "answer_tokens": completion - reasoning,
                    "cost_micros": rng.randint(0, 5000),
                }
            )
        database = gw.database_url.removeprefix("sqlite:///")
        with sqlite3.connect(database) as conn:
            columns = list(records[0])
            placeholders = ", ".join(":" + column for column in columns)
            conn.executemany(
                f"INSERT INTO usage_records ({', '.join(columns)}) VALUES ({placeholders})", records
            )
            conn.execute(
                "UPDATE api_keys SET spent_micros = 1234567, reserved_micros = 89 WHERE id = ?",
                (keys["alice"]["id"],),
            )
        yield Seeded(gw, keys, records)


@pytest.mark.parametrize(
    "group_by", [["day"], ["model"], ["mode"], ["key"], ["day", "mode"], ["model", "mode", "key"]]
)
def test_admin_totals_match_the_records(seeded: Seeded, group_by: list[str]) -> None:
    with seeded.client("admin") as admin:
        response = admin.get("/v1/usage", params={"group_by": ",".join(group_by)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert as_groups(body["data"], group_by) == seeded.expected(group_by)
    for row in body["data"]:
        assert row["cost"] == pytest.approx(row["cost_micros"] / 1e6, abs=1e-12)
        if "key" in group_by:
            assert row["key_name"] in ("alice", "bob")


def test_a_key_sees_only_its_own_usage(seeded: Seeded) -> None:
    alice, bob = seeded.keys["alice"]["id"], seeded.keys["bob"]["id"]
    with seeded.client("alice") as client:
        rows = client.get("/v1/usage", params={"group_by": "key,mode"}).json()["data"]
        assert {row["key_id"] for row in rows} == {alice}
        assert as_groups(rows, ["key", "mode"]) == seeded.expected(["key", "mode"], key_id=alice)
        assert client.get("/v1/usage", params={"key_id": alice}).status_code == 200
        refused = client.get("/v1/usage", params={"key_id": bob})
        assert refused.status_code == 403 and refused.json()["error"]["param"] == "key_id"
        records = client.get("/v1/usage/records", params={"limit": 1000}).json()["data"]
        assert records and {r["key_id"] for r in records} == {alice}
    with seeded.client("admin") as admin:
        rows = admin.get("/v1/usage", params={"group_by": "mode", "key_id": bob}).json()["data"]
        assert as_groups(rows, ["mode"]) == seeded.expected(["mode"], key_id=bob)


def test_date_and_time_filters(seeded: Seeded) -> None:
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    start = datetime.fromisoformat(yesterday).replace(tzinfo=UTC).timestamp()
    with seeded.client("admin") as admin:
        one_day = admin.get(
            "/v1/usage", params={"group_by": "day", "start": yesterday, "end": yesterday}
        ).json()
        assert as_groups(one_day["data"], ["day"]) == seeded.expected(
            ["day"], start=start, end=start + 86_400
        )
        assert [row["day"] for row in one_day["data"]] == [yesterday]
        noon = f"{yesterday}T12:00:00Z"
        since_noon = admin.get("/v1/usage", params={"group_by": "mode", "start": noon}).json()["data"]
        assert as_groups(since_noon, ["mode"]) == seeded.expected(["mode"], start=start + 43_200)
        unix = admin.get("/v1/usage", params={"group_by": "mode", "start": str(start + 43_200)}).json()[
            "data"
        ]
        assert unix == since_noon


def test_records_page_newest_first_without_gaps(seeded: Seeded) -> None:
    expected = sorted(seeded.records, key=lambda r: (r["created_at"], r["id"]), reverse=True)
    seen: list[str] = []
    cursor = None
    with seeded.client("admin") as admin:
        while True:
            params: dict[str, Any] = {"limit": 7, **({"cursor": cursor} if cursor else {})}
            page = admin.get("/v1/usage/records", params=params).json()
            seen += [record["id"] for record in page["data"]]
            assert page["has_more"] == (page["next_cursor"] is not None)
            if not page["has_more"]:
                break
            assert len(page["data"]) == 7
            cursor = page["next_cursor"]
        assert seen == [r["id"] for r in expected]
        aborted = admin.get("/v1/usage/records", params={"status": "aborted", "limit": 1000}).json()["data"]
        assert sorted(r["id"] for r in aborted) == sorted(
            r["id"] for r in seeded.records if r["status"] == "aborted"
        )
        first = admin.get("/v1/usage/records", params={"limit": 1}).json()["data"][0]
    source = next(r for r in seeded.records if r["id"] == first["id"])
    assert {k: first[k] for k in source} == source
    assert first["cost"] == pytest.approx(source["cost_micros"] / 1e6, abs=1e-12)


def test_csv_export_of_totals_and_records(seeded: Seeded) -> None:
    with seeded.client("admin") as admin:
        json_rows = admin.get("/v1/usage", params={"group_by": "day,mode"}).json()["data"]
        by_format = admin.get("/v1/usage", params={"group_by": "day,mode", "format": "csv"})
        by_accept = admin.get("/v1/usage", params={"group_by": "day,mode"}, headers={"Accept": "text/csv"})
        records_csv = admin.get("/v1/usage/records", params={"limit": 1000, "format": "csv"})
    assert by_format.headers["content-type"].startswith("text/csv")
    assert by_format.text == by_accept.text
    rows = list(csv.DictReader(io.StringIO(by_format.text)))
    assert list(rows[0])[:2] == ["day", "mode"]
    assert [(r["day"], r["mode"], int(r["requests"]), int(r["cost_micros"])) for r in rows] == [
        (r["day"], r["mode"], r["requests"], r["cost_micros"]) for r in json_rows
    ]
    # USD in CSV is an exact decimal string, never a float in exponent notation.
    assert all(
        r["cost"] == f"{int(r['cost_micros']) // 10**6}.{int(r['cost_micros']) % 10**6:06d}" for r in rows
    )
    records = list(csv.DictReader(io.StringIO(records_csv.text)))
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in seeded.records)


def test_balance_reports_budget_spent_reserved(seeded: Seeded) -> None:
    with seeded.client("alice") as client:
        balance = client.get("/v1/balance").json()
    assert balance == {
        "object": "balance",
        "budget": 5.0,
        "spent": 1.234567,
        "reserved": 0.000089,
        "available": 3.765344,
        "budget_micros": 5_000_000,
        "spent_micros": 1_234_567,
        "reserved_micros": 89,
        "available_micros": 3_765_344,
    }
    with seeded.client("bob") as client:
        unlimited = client.get("/v1/balance").json()
    assert (
        unlimited["budget"] is None
        and unlimited["available"] is None
        and unlimited["available_micros"] is None
    )


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/v1/usage", {"start": "yesterday"}, "start"),
        ("/v1/usage", {"end": "2026-13-01"}, "end"),
        ("/v1/usage", {"group_by": "week"}, "group_by"),
        ("/v1/usage", {"group_by": "day,day"}, "group_by"),
        ("/v1/usage", {"format": "xml"}, "format"),
        ("/v1/usage/records", {"limit": "0"}, "limit"),
        ("/v1/usage/records", {"limit": "many"}, "limit"),
        ("/v1/usage/records", {"cursor": "%%%"}, "cursor"),
        ("/v1/usage/records", {"status": "lost"}, "status"),
    ],
)
def test_bad_parameters_are_400_naming_them(
    seeded: Seeded, path: str, params: dict[str, str], param: str
) -> None:
    with seeded.client("admin") as admin:
        response = admin.get(path, params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_usage_needs_a_key(seeded: Seeded) -> None:
    for path in ("/v1/usage", "/v1/usage/records", "/v1/balance"):
        response = httpx.get(seeded.gateway.base_url + path, timeout=30)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_openapi_describes_the_usage_routes(seeded: Seeded) -> None:
    schema = httpx.get(f"{seeded.gateway.base_url}/openapi.json", timeout=30).json()
    paths = schema["paths"]
    for path in ("/v1/usage", "/v1/usage/records", "/v1/balance", "/v1/tokenizers/estimate-token-count"):
        operation = next(iter(paths[path].values()))
        assert "422" not in operation["responses"]
        assert "$ref" in str(operation["responses"]["200"])
    params = {p["name"]: p["schema"] for p in paths["/v1/usage/records"]["get"]["parameters"]}
    assert params["limit"]["type"] == "integer" and params["limit"]["maximum"] == 1000
    assert "lost" not in str(params["status"]) and "interrupted" in str(params["status"])
    assert "text/csv" in paths["/v1/usage"]["get"]["responses"]["200"]["content"]
    balance = schema["components"]["schemas"]["BalanceOut"]["properties"]
    assert {"budget", "spent", "reserved", "available", "spent_micros"} <= set(balance)


def test_usage_command_prints_the_same_totals(seeded: Seeded) -> None:
    alice = seeded.keys["alice"]["id"]
    out = seeded.gateway.cli("usage", "--key", alice, "--group-by", "mode", "--since", "7d")
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["MODE", "REQUESTS", "REJECTED"]
    expected = seeded.expected(["mode"], key_id=alice, start=time.time() - 7 * 86_400)
    printed = {line.split()[0]: line.split() for line in lines[1:]}
    for (mode,), totals in expected.items():
        assert int(printed[mode][1]) == totals["requests"]
        assert int(printed[mode][3]) == totals["prompt_tokens"]
        assert printed[mode][-1] == f"{totals['cost_micros'] // 10**6}.{totals['cost_micros'] % 10**6:06d}"
    total = sum(t["cost_micros"] for t in expected.values())
    assert printed["TOTAL"][-1] == f"{total // 10**6}.{total % 10**6:06d}"
    bad = subprocess.run(
        [*THINKGATE, "--database-url", seeded.gateway.database_url, "usage", "--since", "soon"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert bad.returncode == 2 and "--since" in bad.stderr
