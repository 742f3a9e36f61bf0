"""Prices from configuration, costs on every response, token estimates, metrics, and the CLI for keys.

Engine-backed: a gateway runs with a `--prices-file` that changes the bundled model's prices; the
cost of real requests must follow those prices exactly, show up in the usage API and the balance,
and move the Prometheus counters. The token estimate must equal the prompt tokens the engine
counts when the same messages are really sent (images included).
"""

from __future__ import annotations

import base64
import io
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image, ImageDraw

from tests.support import ROOT, THINKGATE, GatewayProcess, query_db, run_cli, start_gateway

MODEL = "thinkgate-arith"
PRICES = """
[thinkgate-arith.long]
input = 1_000_000
reasoning_output = 3_000_000
answer_output = 5_000_000

[thinkgate-arith.short]
answer_output = 7_000_000
"""


def png(text: str) -> str:
    image = Image.new("RGB", (160, 60), "white")
    ImageDraw.Draw(image).text((8, 20), text, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_price_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    from app.core.config import REPO_ROOT
    from app.metering.prices import apply_price_file
    from app.profiles.profile import ProfileError, ProfileRegistry

    registry = ProfileRegistry.from_dir(REPO_ROOT / "models" / "profiles")
    path = tmp_path / "prices.toml"
    path.write_text(PRICES)
    changed = apply_price_file(registry, path).by_name(MODEL).prices
    original = registry.by_name(MODEL).prices
    assert (changed["long"].input, changed["long"].reasoning_output, changed["long"].answer_output) == (
        1_000_000,
        3_000_000,
        5_000_000,
    )
    assert changed["long"].cached_input == original["long"].cached_input  # not named: kept
    assert changed["short"].answer_output == 7_000_000
    assert changed["short"].input == original["short"].input
    assert apply_price_file(registry, path).by_name("qwen3").prices == registry.by_name("qwen3").prices
    for bad in (
        "[no-such-model.long]\ninput = 1\n",
        "[thinkgate-arith.medium]\ninput = 1\n",
        "[thinkgate-arith.long]\ninput = 0.5\n",
        "[thinkgate-arith.long]\nvibes = 1\n",
    ):
        path.write_text(bad)
        with pytest.raises(ProfileError):
            apply_price_file(registry, path)


@pytest.fixture(scope="module")
def priced(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("priced")
    prices = workdir / "prices.toml"
    prices.write_text(PRICES)
    with start_gateway(workdir, upstreams=[engine.url], args=("--prices-file", str(prices))) as gw:
        gw.api_key = gw.create_key("priced")
        yield gw


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample over the series whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match[1] for k, v in labels.items()):
            total += float(match[2])
    return total


@pytest.mark.engine
def test_costs_follow_the_configured_prices_everywhere(priced: GatewayProcess) -> None:
    headers = {"Authorization": f"Bearer {priced.api_key}"}
    with httpx.Client(base_url=priced.base_url, headers=headers, timeout=120) as client:
        before = client.get("/metrics").text
        plain = client.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "reasoning_mode": "long",
                "max_tokens": 40,
                "messages": [{"role": "user", "content": "What is 21 + 21?"}],
            },
        )
        streamed = client.post(
            "/v1/chat/completions",
            json={
                "model": f"{MODEL}:short",
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": 20,
                "messages": [{"role": "user", "content": "What is 2 + 2?"}],
            },
        )
        after = client.get("/metrics").text
        balance = client.get("/v1/balance").json()
        usage = {
            row["mode"]: row for row in client.get("/v1/usage", params={"group_by": "mode"}).json()["data"]
        }
    assert plain.status_code == 200 and streamed.status_code == 200
    long_usage = plain.json()["usage"]
    short_usage = [
        orjson.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")
    ][-1]
    short_usage = short_usage["usage"]
    # The configured prices, in micro-USD per million tokens, rounded up once per request.
    long_details = long_usage["completion_tokens_details"]
    long_cost = -(
        -(
            long_usage["prompt_tokens"] * 1_000_000
            + long_details["reasoning_tokens"] * 3_000_000
            + long_details["answer_tokens"] * 5_000_000
        )
        // 1_000_000
    )
    short_cost = -(
        -(short_usage["prompt_tokens"] * 200_000 + short_usage["completion_tokens"] * 7_000_000) // 1_000_000
    )
    assert round(long_usage["cost"] * 1e6) == long_cost
    assert plain.headers["x-usage-cost"] == f"0.{long_cost:06d}"
    assert round(short_usage["cost"] * 1e6) == short_cost
    assert balance["spent_micros"] == long_cost + short_cost
    assert usage["long"]["cost_micros"] == long_cost and usage["short"]["cost_micros"] == short_cost
    assert usage["long"]["reasoning_tokens"] == long_details["reasoning_tokens"]
    # Prometheus moved by exactly these two requests.
    for mode, spent, body in (("long", long_cost, long_usage), ("short", short_cost, short_usage)):
        labels = {"model": MODEL, "mode": mode}
        delta = metric(after, "thinkgate_cost_micro_usd_total", **labels) - metric(
            before, "thinkgate_cost_micro_usd_total", **labels
        )
        assert delta == spent
        prompt = metric(after, "thinkgate_tokens_total", kind="prompt", **labels) - metric(
            before, "thinkgate_tokens_total", kind="prompt", **labels
        )
        assert prompt == body["prompt_tokens"]
        finished = sum(
            metric(after, "thinkgate_requests_total", status=s, **labels)
            - metric(before, "thinkgate_requests_total", status=s, **labels)
            for s in ("completed", "length")
        )
        assert finished == 1
        ttft = metric(after, "thinkgate_time_to_first_token_seconds_count", **labels) - metric(
            before, "thinkgate_time_to_first_token_seconds_count", **labels
        )
        assert ttft == 1


@pytest.mark.engine
@pytest.mark.parametrize("with_image", [False, True], ids=["text", "image"])
def test_token_estimate_equals_the_prompt_the_engine_counts(priced: GatewayProcess, with_image: bool) -> None:
    content: Any = "What is 345 + 678? Show the carries."
    if with_image:
        content = [
            {"type": "text", "text": "Read the sum:"},
            {"type": "image_url", "image_url": {"url": png("3+4")}},
        ]
    body = {
        "model": MODEL,
        "reasoning_mode": "long",
        "messages": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": content}],
    }
    with httpx.Client(
        base_url=priced.base_url, headers={"Authorization": f"Bearer {priced.api_key}"}, timeout=120
    ) as client:
        estimate = client.post("/v1/tokenizers/estimate-token-count", json=body)
        real = client.post("/v1/chat/completions", json={**body, "max_tokens": 1})
        bad = client.post("/v1/tokenizers/estimate-token-count", json={"model": MODEL})
    assert estimate.status_code == 200, estimate.text
    assert estimate.json() == {"data": {"total_tokens": real.json()["usage"]["prompt_tokens"]}}
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"


@pytest.mark.engine
def test_metering_off_keeps_no_ledger(engine: Any, tmp_path: Path) -> None:
    with start_gateway(tmp_path / "gw", upstreams=[engine.url], args=("--no-metering",)) as gateway:
        key = gateway.create_key("unmetered", "--budget", "0")
        response = httpx.post(
            f"{gateway.base_url}/v1/chat/completions",
            timeout=120,
            headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "1+1"}]},
        )
        # A zero budget would refuse this request; with metering off nothing is reserved or recorded,
        # but the response still says what it would have cost.
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["cost"] > 0
        assert query_db(gateway.database_url, "SELECT COUNT(*) AS n FROM usage_records")[0]["n"] == 0


@pytest.mark.slow
def test_keys_command_creates_lists_updates_and_revokes(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'keys.db'}"
    out = run_cli(
        "keys",
        "create",
        "--name",
        "ops",
        "--budget",
        "12.345678",
        "--rpm",
        "30",
        "--tpm",
        "5000",
        "--modes",
        "short",
        "--max-effort",
        "medium",
        database_url=database,
    )
    key_id = re.search(r"key_[0-9a-f]+", out)
    assert key_id and out.strip().splitlines()[-1].startswith("tg-")
    row = query_db(database, "SELECT * FROM api_keys WHERE id = :k", k=key_id[0])[0]
    assert (row["budget_micros"], row["rpm"], row["tpm"], row["allowed_modes"], row["max_effort"]) == (
        12_345_678,
        30,
        5000,
        "short",
        "medium",
    )
    run_cli(
        "keys",
        "update",
        key_id[0],
        "--budget",
        "0.5",
        "--clear",
        "rpm",
        "--modes",
        "long,short",
        database_url=database,
    )
    row = query_db(database, "SELECT * FROM api_keys WHERE id = :k", k=key_id[0])[0]
    assert (row["budget_micros"], row["rpm"], row["tpm"], row["allowed_modes"]) == (
        500_000,
        None,
        5000,
        "long,short",
    )
    listing = run_cli("keys", "list", database_url=database)
    assert key_id[0] in listing and "$0.500000" in listing and "active" in listing
    run_cli("keys", "revoke", key_id[0], database_url=database)
    assert "revoked" in run_cli("keys", "list", database_url=database)
    refused = subprocess.run(
        [*THINKGATE, "--database-url", database, "keys", "create", "--name", "x", "--budget", "lots"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert refused.returncode != 0 and "not an amount of USD" in refused.stderr
