"""``make model``: rebuild the bundled model from nothing (data, tokenizer, training, checkpoint files).

    python -m training.build                 # full build into models/thinkgate-arith (~60 min on 2 cores)
    python -m training.build --quick         # pipeline check in a few minutes, into a temp folder
    python -m training.build --placeholder   # final files with untrained weights (for wiring tests)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from training import checksums
from training import examples as E
from training import modelcfg as mc
from training import tokenizer as tk

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "thinkgate-arith"


def build_tokenizer(seed: int):  # noqa: ANN201 - PreTrainedTokenizerFast
    corpus = E.corpus(random.Random(seed), 6000)
    return tk.wrap(tk.train_tokenizer(corpus))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few-minute pipeline check (never the shipped dir)")
    ap.add_argument("--placeholder", action="store_true", help="write untrained weights, no training")
    ap.add_argument("--out", type=Path, default=None, help="output folder")
    ap.add_argument("--minutes", type=float, default=None, help="training time budget")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    out: Path = args.out or (Path(tempfile.mkdtemp(prefix="thinkgate-arith-quick-")) if args.quick else SHIPPED)
    if args.quick and out.resolve() == SHIPPED.resolve():
        print("--quick never writes the shipped model; choose another --out", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    print(f"[build] output: {out}", flush=True)
    tok = build_tokenizer(args.seed)
    size = mc.Size()
    cfg = mc.build_config(tok, size)
    mc.save_side_files(out, tok, cfg)
    print(f"[build] tokenizer: {len(tok)} tokens; config and processor written", flush=True)

    from training import train as tr

    model = tr.new_model(cfg, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[build] model: {n_params / 1e6:.2f}M parameters", flush=True)
    report: dict[str, object] = {"parameters": n_params, "seed": args.seed}
    if not args.placeholder:
        from training import inproc_eval

        minutes = args.minutes if args.minutes is not None else (1.5 if args.quick else 55.0)
        settings = tr.TrainSettings(minutes=minutes, seed=args.seed,
                                    eval_every_s=max(minutes * 60 / 6, 60) if not args.quick else minutes * 30)
        n_probe = 8 if args.quick else 20

        def on_eval(step: int, elapsed: float) -> None:
            table = inproc_eval.evaluate(model, tok, n=n_probe, seed=7, cells=inproc_eval.PROBE_CELLS)
            print(f"[eval] step {step} at {elapsed / 60:.1f} min: {inproc_eval.brief(table)}", flush=True)
            tr.save_weights(model, out)  # a usable checkpoint exists even if time runs out later

        stats = tr.train(model, tok, settings, on_eval=on_eval, exclude=inproc_eval.eval_problems())
        print(f"[build] trained {stats['steps']:.0f} steps in {stats['seconds'] / 60:.1f} min, "
              f"loss {stats['loss']:.3f}", flush=True)
        report["train"] = stats
        tr.save_weights(model, out)
        final = inproc_eval.evaluate(model, tok, n=8 if args.quick else 100, seed=99)
        print(inproc_eval.format_table(final), flush=True)
        report["eval_inprocess"] = final
    else:
        tr.save_weights(model, out)
    mc.save_side_files(out, tok, cfg)  # save_pretrained rewrote config.json; restore the exact one
    (out / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    checksums.write_sums(out)
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    print(f"[build] done in {(time.monotonic() - t0) / 60:.1f} min; weights {size_mb:.1f} MB; {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
