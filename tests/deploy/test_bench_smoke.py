"""The benchmark harness end to end at tiny scale: fake engine, direct and through Thinkgate.

Not a measurement (that is `make bench`, never in CI): it proves the one-command bench still runs,
its load generator counts what the servers send, and the table and JSON come out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOKENS = 16
EVENTS_PER_STREAM = TOKENS + 2  # the role chunk, one chunk per token, the finish chunk


def test_bench_runs_end_to_end_against_the_fake_engine(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.run", "--engines", "fake", "--proxies", "direct,thinkgate",
               "--concurrency", "1,4", "--duration", "1.5", "--warmup", "0.5", "--rounds", "1",
               "--tokens", str(TOKENS), "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    rows = {(row["proxy"], row["concurrency"]): row for row in report["rows"]}
    assert set(rows) == {("direct", 1), ("direct", 4), ("thinkgate", 1), ("thinkgate", 4)}
    for (proxy, _), row in rows.items():
        assert row["errors"] == 0, row["first_error"]
        assert row["requests"] > 0 and row["ttft_p50_ms"] > 0
        # Streams cut by the window's edges aside, every request brought its whole stream.
        assert (
            0.8 * EVENTS_PER_STREAM <= row["chunks_per_s"] / row["requests_per_s"] <= 1.3 * EVENTS_PER_STREAM
        )
        if proxy == "thinkgate":
            assert row["cpu_s_per_1k"] > 0 and row["rss_peak_mib"] > 10
    assert "| fake | 4 | thinkgate |" in result.stdout
    assert any("median TTFT" in line for line in report["verdict"])
