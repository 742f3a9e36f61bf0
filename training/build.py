"""``make model``: rebuild the bundled model from nothing (data, tokenizer, training, checkpoint files).

    python -m training.build                 # the shipped weights' recipe: models/thinkgate-arith
    python -m training.build --quick         # every stage scaled down: a ~3-minute check, into a temp folder
    python -m training.build --placeholder   # final files with untrained weights (for wiring tests)
    python -m training.build --until-stage 2 --out OUT               # the recipe's first stages only
    python -m training.build --resume OUT --from-stage 3 --out OUT2  # ... and the rest, later
    python -m training.build --resume DIR --stages l2s-rs:8:1e-4 --normalised-images --out OUT  # experiments

The output is built in ``<out>.partial`` and swapped in at the end, so an engine reading the current
checkpoint never sees a half-written one.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from training.long2short import L2SSettings
    from training.rl import RLSettings
    from training.train import TrainSettings

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "thinkgate-arith"
# The tokenizer is part of the interface (engines and tests rely on its ids): it does not follow --seed.
TOKENIZER_SEED = 1234


@dataclass(frozen=True)
class Stage:
    minutes: float
    lr: float
    kind: str = "mixed"  # see training.train.TrainSettings.kind
    seed: int | None = None  # the stage's data seed; default: --seed plus the stage's number - 1
    normalised: bool = False  # images in the glyph-grid layout (app/profiles/thinkgate_arith.py)
    images: bool = True  # False: text problems only (a text step is ~1.7x faster than one with images)
    # Other training settings of this stage, by name (training.train.TrainSettings), e.g. {"batch": 12}.
    train: dict[str, Any] = field(default_factory=dict)


# The shipped weights' recipe (`make model`, the second generation): from nothing, with a fresh optimizer
# and new problems in each stage, and each stage from the weights before it (as shipped, bf16). Measured
# in full in the model card.
# 1-3. Text alone, both modes, in batches of 12 (a text step is ~1.7x faster than one with images, and
#    small batches learn hard text in fewer minutes): long traces, short solutions, the refusal,
#    conversations of up to four turns, the calculator tool. 8,000 steps at lr 1e-3, 4,000 at 5e-4,
#    then 12,000 at 4e-4 with 40 % of the problems at the hard split's sizes (hard text was still
#    climbing: the largest problems are the fewest in the training split).
# 4. The vision tower learns to read the glyph grid on its reading head alone.
# 5. Everything together: the language model learns to copy what the tower reads.
# 6. The short-mode drill: short solutions on easy and hard problems, a third in conversations, in
#    batches of half the usual token budget (twice the steps).
# 7-9. Divisions in the new long trace (a step per dividend digit with the digits still to bring down,
#    the subtraction in columns: training/traces.py), from the weights of stage 6: 6,000 text steps with
#    nearly half the problems divisions, then the joint and drill stages again (joint at half the rate:
#    it cost hard text accuracy the first time).
# 10. Divisions that catch a quotient digit one off (training/traces.py: `over`, `rR big`, the step
#    re-done), with images, so that no joint or drill stage has to follow: 3,000 steps.
# 11. More of it at a lower rate and half the problems hard-sized (stage 10 was still climbing).
# The long2short stages (training/long2short.py: l2s-rs, l2s-rl) are not in the recipe: short runs of
# them moved nothing measurable (model card).
# Conversations and tool prompts are long (a tools block is ~300 tokens) and teach little until the
# arithmetic is there: few of them while it is learned, the usual share afterwards.
FEW_LONG_PROMPTS = {"short_easy_rate": 0.5, "conversation_rate": 0.05, "tools_rate": 0.05}
LONG_PROMPTS = {"short_easy_rate": 0.5, "conversation_rate": 0.15, "tools_rate": 0.1}
DEFAULT = (
    Stage(90.0, 1e-3, normalised=True, images=False, train={"batch": 12, "steps": 8000, **FEW_LONG_PROMPTS}),
    Stage(45.0, 5e-4, normalised=True, images=False, train={"batch": 12, "steps": 4000, **LONG_PROMPTS}),
    Stage(
        80.0,
        4e-4,
        normalised=True,
        images=False,
        train={"batch": 12, "steps": 12000, "hard_rate": 0.4, **LONG_PROMPTS},
    ),
    Stage(2.5, 2e-3, "vision", normalised=True),
    Stage(10.0, 4e-4, "joint", normalised=True),
    Stage(8.0, 3e-4, "drill", normalised=True, train={"drill_tokens": 12 * 256, "drill_rate": 0.5}),
    Stage(
        35.0,
        4e-4,
        normalised=True,
        images=False,
        train={"batch": 12, "steps": 6000, "hard_rate": 0.4, "division_rate": 0.3, **LONG_PROMPTS},
    ),
    Stage(10.0, 2e-4, "joint", normalised=True),
    Stage(8.0, 3e-4, "drill", normalised=True, train={"drill_tokens": 12 * 256, "drill_rate": 0.5}),
    Stage(
        35.0,
        3e-4,
        normalised=True,
        train={"batch": 12, "steps": 3000, "hard_rate": 0.4, "division_rate": 0.3, **LONG_PROMPTS},
    ),
    Stage(
        30.0,
        2e-4,
        normalised=True,
        train={"batch": 12, "steps": 2400, "hard_rate": 0.5, "division_rate": 0.2, **LONG_PROMPTS},
    ),
)
RECIPES = {"default": DEFAULT}
DEFAULT_RECIPE = "default"


def parse_stages(spec: str) -> list[Stage]:
    """``kind:minutes:lr,...``, e.g. ``vision:30:2e-3,joint:35:3e-4`` (the image-reading experiment
    in the model card: stage kinds in training.train.TrainSettings)."""
    from training import long2short
    from training.train import KINDS

    kinds = (*KINDS, "rl", *long2short.KINDS)  # rl: training/rl.py; l2s-*: training/long2short.py
    stages = []
    for part in spec.split(","):
        kind, minutes, lr = part.split(":")
        if kind not in kinds:
            raise ValueError(f"unknown stage kind {kind!r} (one of {', '.join(kinds)})")
        stages.append(Stage(float(minutes), float(lr), kind))
    return stages


QUICK_MINUTES = 1.5


def quick_stages(recipe: tuple[Stage, ...]) -> list[Stage]:
    """``--quick``: the recipe's stages in the same order and proportions, in QUICK_MINUTES in all
    (a check that every stage kind runs, not a model)."""
    total = sum(stage.minutes for stage in recipe)
    return [replace(stage, minutes=QUICK_MINUTES * stage.minutes / total) for stage in recipe]


def stage_settings(
    stage: Stage, default_seed: int, *, quick: bool = False
) -> TrainSettings | RLSettings | L2SSettings:
    """The training settings of one stage. Probes every quarter of a stage (at most one a minute:
    a probe costs ~20 s), at half of a --quick stage."""
    from training.long2short import KINDS as L2S_KINDS
    from training.long2short import L2SSettings
    from training.rl import RLSettings
    from training.train import TrainSettings

    seed = stage.seed if stage.seed is not None else default_seed
    eval_every_s = stage.minutes * 30 if quick else max(stage.minutes * 60 / 4, 60)
    if stage.kind == "rl":
        # --quick: short replies, so that a step fits in the scaled-down stage.
        max_new = 48 if quick else RLSettings.max_new
        return RLSettings(stage.minutes, stage.lr, seed=seed, eval_every_s=eval_every_s, max_new=max_new)
    if stage.kind in L2S_KINDS:
        # Other settings by name from the stage's `train` dict (training.long2short.L2SSettings).
        quick_l2s = {"max_new": 48, "long_max_new": 48} if quick else {}
        return L2SSettings(
            kind=stage.kind,
            minutes=stage.minutes,
            lr=stage.lr,
            seed=seed,
            eval_every_s=eval_every_s,
            **{**stage.train, **quick_l2s},
        )
    no_images = {} if stage.images else {"image_rate": 0.0, "short_image_rate": 0.0}
    train = {k: v for k, v in stage.train.items() if not (quick and k == "steps")}  # --quick: minutes
    return TrainSettings(
        minutes=stage.minutes,
        seed=seed,
        lr=stage.lr,
        kind=stage.kind,
        eval_every_s=eval_every_s,
        **no_images,
        **train,
    )


def build_tokenizer(seed: int) -> PreTrainedTokenizerFast:
    from training import examples as E
    from training import tokenizer as tk

    corpus = E.corpus(random.Random(seed), 6000)
    return tk.wrap(tk.train_tokenizer(corpus))


def resumed_tokenizer(checkpoint: Path) -> PreTrainedTokenizerFast:
    """The tokenizer resumed weights were trained with. Not rebuilt: the tokenizer is trained on the
    training text, so a change to any trace would change its merges and silently renumber the tokens
    under the resumed weights."""
    from tokenizers import Tokenizer

    from training import tokenizer as tk

    return tk.wrap(Tokenizer.from_file(str(checkpoint / "tokenizer.json")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few-minute pipeline check (never the shipped dir)")
    ap.add_argument("--placeholder", action="store_true", help="write untrained weights, no training")
    ap.add_argument("--out", type=Path, default=None, help="output folder")
    ap.add_argument("--minutes", type=float, default=None, help="training time budget")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="continue training from this checkpoint (a second stage of the time budget)",
    )
    ap.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=DEFAULT_RECIPE,
        help="default: the shipped weights' recipe (model card)",
    )
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate")
    ap.add_argument("--stages", type=parse_stages, default=None, help="kind:minutes:lr,... (experiments)")
    ap.add_argument(
        "--from-stage",
        type=int,
        default=None,
        help="with --resume: run the recipe from this stage (1-based) on the resumed weights",
    )
    ap.add_argument(
        "--until-stage",
        type=int,
        default=None,
        help="run the recipe's stages 1..N only (continue later with --resume OUT --from-stage N+1)",
    )
    ap.add_argument(
        "--normalised-images",
        action="store_true",
        help="every stage draws images in the glyph-grid layout (app/profiles/thinkgate_arith.py), not "
        "only the last ones",
    )
    args = ap.parse_args(argv)

    out: Path = args.out or (
        Path(tempfile.mkdtemp(prefix="thinkgate-arith-quick-")) if args.quick else SHIPPED
    )
    if args.quick and out.resolve() == SHIPPED.resolve():
        print("--quick never writes the shipped model; choose another --out", file=sys.stderr)
        return 2
    # Heavy imports only once the arguments are known to be fine.
    import torch

    from training import checksums, render
    from training import modelcfg as mc

    torch.set_num_threads(args.threads)
    final_out, out = out, out.with_name(out.name + ".partial")
    # Build into a staging folder and swap at the end: engines may be reading the current checkpoint.
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    print(f"[build] output: {final_out} (staged in {out})", flush=True)
    tok = build_tokenizer(TOKENIZER_SEED) if args.resume is None else resumed_tokenizer(args.resume)
    size = mc.Size()
    cfg = mc.build_config(tok, size)
    mc.save_side_files(out, tok, cfg)
    print(f"[build] tokenizer: {len(tok)} tokens; config and processor written", flush=True)

    from training import train as tr
    from training.long2short import L2SSettings

    model = tr.new_model(cfg, args.seed)
    if args.resume is not None:
        from transformers import Idefics3ForConditionalGeneration

        # Weights only (bf16 on disk, trained on in fp32); optimizer state starts fresh.
        previous = Idefics3ForConditionalGeneration.from_pretrained(str(args.resume), dtype=torch.float32)
        model.load_state_dict(previous.state_dict())
        print(f"[build] resumed weights from {args.resume}", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[build] model: {n_params / 1e6:.2f}M parameters", flush=True)
    report: dict[str, object] = {
        "parameters": n_params,
        "seed": args.seed,
        "resumed_from": str(args.resume) if args.resume else None,
    }
    if not args.placeholder:
        from training import inproc_eval

        first = 1
        recipe = RECIPES[args.recipe]
        if args.quick:
            stages = quick_stages(recipe)
        elif args.stages is not None:
            stages = args.stages
        elif args.from_stage is not None:
            if args.resume is None or not 1 <= args.from_stage <= len(recipe):
                print(f"--from-stage needs --resume and a stage in 1..{len(recipe)}", file=sys.stderr)
                return 2
            first = args.from_stage
            stages = list(recipe[first - 1 : args.until_stage])
        elif args.minutes is not None or args.resume is not None:
            minutes = args.minutes if args.minutes is not None else recipe[0].minutes
            stages = [Stage(minutes, args.lr or tr.TrainSettings.lr)]
        else:
            stages = list(recipe)[: args.until_stage]
        head = None
        if any(stage.kind in tr.READING_KINDS for stage in stages):
            from training import vision

            torch.manual_seed(args.seed)
            head = vision.reading_head(model)  # training only: never saved
        n_probe = 4 if args.quick else 12
        # --quick checks the pipeline, not the model: short generations keep it within minutes.
        max_new = 48 if args.quick else 500

        def on_eval(step: int, elapsed: float) -> None:
            tr.save_weights(model, out)  # a usable checkpoint exists even if time runs out later
            try:
                table = inproc_eval.evaluate(
                    model, tok, n=n_probe, seed=7, cells=inproc_eval.PROBE_CELLS, max_new=max_new
                )
                print(f"[eval] step {step} at {elapsed / 60:.1f} min: {inproc_eval.brief(table)}", flush=True)
            except Exception as exc:  # a probe must never end a long training run
                print(f"[eval] probe failed: {exc!r}", flush=True)

        report["stages"] = []
        previous_report = args.resume / "build_report.json" if args.resume is not None else None
        if first > 1 and previous_report is not None and previous_report.exists():
            # The stages that made the resumed weights stay in the report: it describes the whole recipe.
            report["stages"] = json.loads(previous_report.read_text()).get("stages", [])[: first - 1]
            report["resumed_from"] = f"{args.resume} (after stage {first - 1})"
        for number, stage in enumerate(stages, start=first):
            if number > first:
                # A later stage starts from the weights as shipped (bf16), with a fresh optimizer,
                # and sees new problems.
                with torch.no_grad():
                    for param in model.parameters():
                        param.copy_(param.to(torch.bfloat16).to(torch.float32))
            render.NORMALISED = stage.normalised or args.normalised_images
            default_seed = args.seed + (number - 1) + (1 if args.resume is not None and first == 1 else 0)
            settings = stage_settings(stage, default_seed, quick=args.quick)
            layout = ", normalised images" if render.NORMALISED else ""
            print(
                f"[build] stage {number}/{first + len(stages) - 1}: {stage.kind}, {stage.minutes:g} min "
                f"at lr {stage.lr:g}{layout}",
                flush=True,
            )
            if isinstance(settings, tr.TrainSettings):
                stats = tr.train(
                    model, tok, settings, on_eval=on_eval, exclude=inproc_eval.eval_problems(), head=head
                )
            elif isinstance(settings, L2SSettings):
                from training import long2short

                stats = long2short.train(
                    model, tok, settings, on_eval=on_eval, exclude=inproc_eval.eval_problems()
                )
            else:
                from training import rl

                stats = rl.train(model, tok, settings, on_eval=on_eval, exclude=inproc_eval.eval_problems())
            if "loss" in stats:
                outcome = f"loss {stats['loss']:.3f}"
            else:  # rl: no loss worth printing; the sampled reward tells how it went
                outcome = f"sampled reward {stats['reward_first']:.0%} -> {stats['reward_last']:.0%}"
            print(
                f"[build] stage {number}: {stats['steps']:.0f} steps in {stats['seconds'] / 60:.1f} min, "
                f"{outcome}",
                flush=True,
            )
            report["stages"].append(
                {
                    "stage": number,
                    "kind": stage.kind,
                    "seed": settings.seed,
                    "minutes": stage.minutes,
                    "lr": stage.lr,
                    **stats,
                }
            )
        report["train"] = {
            "steps": sum(st["steps"] for st in report["stages"]),
            "seconds": sum(st["seconds"] for st in report["stages"]),
            "loss": next((st["loss"] for st in reversed(report["stages"]) if "loss" in st), None),
        }
        tr.save_weights(model, out)
        final = inproc_eval.evaluate(model, tok, n=2 if args.quick else 40, seed=99, max_new=max_new)
        print(inproc_eval.format_table(final), flush=True)
        report["eval_inprocess"] = final
    else:
        tr.save_weights(model, out)
    mc.save_side_files(out, tok, cfg)  # save_pretrained rewrote config.json; restore the exact one
    (out / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    checksums.write_sums(out)
    card = final_out / "README.md"
    if card.exists():
        shutil.copy2(card, out / "README.md")  # the model card is written by hand; keep it
    old = final_out.with_name(final_out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final_out.exists():
        final_out.rename(old)
    out.rename(final_out)
    shutil.rmtree(old, ignore_errors=True)
    size_mb = (final_out / "model.safetensors").stat().st_size / 1e6
    print(
        f"[build] done in {(time.monotonic() - t0) / 60:.1f} min; weights {size_mb:.1f} MB; {final_out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
