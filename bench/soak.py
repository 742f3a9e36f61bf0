"""Soak: Thinkgate under steady moderate load for a long time, its memory (RSS) sampled over time.

    python -m bench.soak                      # 30 minutes, 8 streams at 20 requests/s (not in CI)
    python -m bench.soak --minutes 3          # the short demonstration

The fake engine, the gateway (ledger on, SQLite) and the load generator run as three processes.
Memory is "flat" when the median RSS of the last third of the run is within `--tolerance-mib` of
the median of the first third (after the warm-up): a leak per request grows without bound, while
allocator and cache warm-up settle early. Prints the samples and the verdict; JSON under
artifacts/bench/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen
from bench.run import ROOT, start_fake_engine, start_thinkgate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--rate", type=float, default=20.0, help="requests per second (moderate: the machine stays usable)"
    )
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--warmup-s", type=float, default=30.0, help="samples ignored by the verdict")
    parser.add_argument("--tolerance-mib", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench")
    args = parser.parse_args(argv)
    duration = args.minutes * 60
    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="thinkgate-soak-") as tmp:
        workdir = Path(tmp)
        (workdir / "gateway").mkdir()
        fake = start_fake_engine(workdir, 64)
        gateway = start_thinkgate(workdir / "gateway", fake.url)
        try:
            command = loadgen.command(
                gateway.url, "fake-reasoner", concurrency=args.concurrency, duration=duration, warmup=0,
                rate=args.rate,
            )  # fmt: skip
            # Its JSON goes to a file: a pipe nobody reads until the end fills up and blocks it.
            load_out = (workdir / "load.json").open("w+b")
            load = subprocess.Popen(command, cwd=ROOT, stdout=load_out)
            started = time.monotonic()
            while load.poll() is None:
                elapsed = time.monotonic() - started
                rss = gateway.rss() / 2**20
                samples.append((elapsed, rss))
                print(f"[soak] {elapsed:7.0f} s  RSS {rss:7.1f} MiB", file=sys.stderr, flush=True)
                time.sleep(args.sample_s)
            load_out.seek(0)
            result = json.loads(load_out.read())
            load_out.close()
        finally:
            gateway.stop()
            fake.stop()
    settled = [rss for elapsed, rss in samples if elapsed >= args.warmup_s]
    third = max(1, len(settled) // 3)
    first, last = statistics.median(settled[:third]), statistics.median(settled[-third:])
    flat = last - first <= args.tolerance_mib
    report = {"minutes": args.minutes, "concurrency": args.concurrency, "rate": args.rate, "load": result,
              "rss_samples_mib": samples, "rss_first_third_mib": first, "rss_last_third_mib": last,
              "flat": flat}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"{result['requests']} requests ({result['requests_per_s']:.0f}/s), {result['errors']} errors")
    print(f"RSS median, first third {first:.1f} MiB → last third {last:.1f} MiB ({last - first:+.1f} MiB): "
          f"{'flat' if flat else 'GROWING'} (tolerance {args.tolerance_mib} MiB); JSON: {path}")  # fmt: skip
    return 0 if flat and result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
