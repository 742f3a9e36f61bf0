"""long2short: the K1.5 report's methods for making the short mode's answers short solutions that stay
right, at toy scale. Two training stages and a merge:

- ``l2s-rs``, shortest rejection sampling: each step samples ``group`` short-mode and ``long_group``
  long-mode replies per problem at temperature 1 and fine-tunes short mode on the shortest correct
  candidate (cross-entropy on the reply, the prompt weighted 0). A correct long-mode reply becomes a
  short-mode candidate through `long_to_short`: short mode has no <think> block, so the long reply's
  thinking cannot be its target; the candidate is the problem's short solution (the same working
  rewritten in one line, `traces.short_solution`, what long mode's correct columns compress to), or with
  ``from_long="answer"`` the long reply's answer line alone.
- ``l2s-rl``, long2short RL with the report's length reward: short-mode groups; within a group
  ``λ = 0.5 − (len − min_len)/(max_len − min_len)`` (0 when all lengths are equal), a correct reply
  is rewarded ``1 + w·λ``, a wrong one ``0 + w·min(0, λ)``; advantage = reward − group mean; the `rl`
  stage's policy loss. Rollouts are cut at ``max_new`` (the report shortens the rollout length too).
- `merge`, model merging: the weights of two checkpoints averaged (the report averages a long-CoT and a
  short-CoT model; here the checkpoint before the short-mode drill and the one after it).

Both stages add ``sft_examples`` ordinary supervised examples per step (mostly long mode), so that the
long mode, which shares the weights, does not drift. Problems are mixed splits weighted to hard, never
an evaluation problem.

    python -m training.long2short compare --base CKPT --before-drill CKPT0 --minutes 8 --out DIR
    python -m training.long2short merge A B --alpha 0.5 --out DIR
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from transformers import Idefics3ForConditionalGeneration, PreTrainedTokenizerFast

from training import examples as E
from training import problems as pb
from training import rl
from training import tokenizer as tk
from training import traces as trc
from training.inproc_eval import Cell, split_reply
from training.train import loss_fn, make_pixel_fn

KINDS = ("l2s-rs", "l2s-rl")
DEFAULT_LR = {"l2s-rs": 1e-4, "l2s-rl": 3e-5}


@dataclass
class L2SSettings(rl.SampledSettings):
    kind: str = "l2s-rs"
    minutes: float = 10.0
    group: int = 8  # short-mode samples per problem
    max_new: int = 160  # short mode: a hard short solution is ~70 tokens; longer ones are cut (wrong)
    hard_rate: float = 0.6
    easy_rate: float = 0.2
    long_group: int = 2  # l2s-rs: long-mode samples per problem
    long_max_new: int = 400
    from_long: str = "solution"  # l2s-rs: a correct long reply's candidate: "solution", "answer", "none"
    length_weight: float = 1.0  # l2s-rl: w, the length reward's weight next to the 1/0 reward
    sft_examples: int = 8  # ordinary supervised examples per step
    sft_long_rate: float = 0.75
    sft_image_rate: float = 0.3  # of the supervised long-mode examples


def length_rewards(correct: list[bool], lengths: list[int], weight: float = 1.0) -> list[float]:
    """One group's rewards: correctness plus the K1.5 length reward (see the module docstring)."""
    lo, hi = min(lengths), max(lengths)
    out = []
    for right, n in zip(correct, lengths, strict=True):
        lam = 0.0 if hi == lo else 0.5 - (n - lo) / (hi - lo)
        out.append(float(right) + weight * (lam if right else min(0.0, lam)))
    return out


def shaped_rewards(batch: list[rl.Rollout], group: int, weight: float) -> list[float]:
    """`length_rewards` of each group of ``group`` consecutive rollouts (their reward: 1 right, 0 not)."""
    out: list[float] = []
    for i in range(0, len(batch), group):
        chunk = batch[i : i + group]
        out += length_rewards([r.reward == 1.0 for r in chunk], [len(r.reply) for r in chunk], weight)
    return out


def shortest_correct(candidates: list[tuple[list[int], bool]]) -> list[int] | None:
    """The shortest reply among the correct ones (the first of equals), None if none is correct."""
    right = [reply for reply, ok in candidates if ok]
    return min(right, key=len) if right else None


def long_to_short(tok: PreTrainedTokenizerFast, problem: pb.Problem, reply: list[int], how: str) -> list[int]:
    """A correct long-mode reply as a short-mode target (see the module docstring)."""
    text = trc.short_solution(problem) if how == "solution" else split_reply(str(tok.decode(reply)))[1]
    text = text.replace(tk.IM_END, "").strip()
    return cast(list[int], tok.encode(text + tk.IM_END, add_special_tokens=False))


def supervised_loss(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    s: L2SSettings,
    rng: random.Random,
    exclude: frozenset[pb.Problem],
    extra: list[tuple[list[int], list[float]]] | None = None,
) -> torch.Tensor:
    """The training loss on ``s.sft_examples`` ordinary examples (both modes, long-heavy) and on the
    ``extra`` (ids, weights) sequences, in one batch."""
    seqs = list(extra or [])
    images = []
    for _ in range(s.sft_examples):
        ex = E.make_example(
            rng,
            image_rate=s.sft_image_rate,
            long_rate=s.sft_long_rate,
            short_easy_rate=0.5,
            short_image_rate=0.0,
            conversation_rate=0.1,
            tools_rate=0.1,
            exclude=exclude,
        )
        seqs.append(E.encode(ex, tok, rng))
        if ex.image is not None:
            images.append(ex.image)
    ids, weights, attn = rl.collate(seqs, tok.pad_token_id)
    pixels = make_pixel_fn(tok)(images) if images else None
    return loss_fn(model, ids, weights, attn, pixels)


def _sampled_stats(batch: list[rl.Rollout]) -> tuple[float, float]:
    return sum(r.reward for r in batch) / len(batch), sum(len(r.reply) for r in batch) / len(batch)


def rejection_step(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    s: L2SSettings,
    rng: random.Random,
    exclude: frozenset[pb.Problem],
) -> rl.StepOutcome:
    """`l2s-rs`: fine-tune short mode on each problem's shortest correct candidate."""
    problems = rl.problems_for_step(rng, s, exclude)
    short = rl.rollouts(model, tok, problems, s, rng, long=False)
    long: list[rl.Rollout] = []
    if s.long_group and s.from_long != "none":
        long = rl.rollouts(model, tok, problems, s, rng, group=s.long_group, max_new=s.long_max_new)
    chosen: list[tuple[list[int], list[float]]] = []
    for i, p in enumerate(problems):
        mine = short[i * s.group : (i + 1) * s.group]
        candidates = [(r.reply, r.reward == 1.0) for r in mine]
        candidates += [
            (long_to_short(tok, p, r.reply, s.from_long), True)
            for r in long[i * s.long_group : (i + 1) * s.long_group]
            if r.reward == 1.0
        ]
        best = shortest_correct(candidates)
        if best is not None:
            prompt = mine[0].prompt
            chosen.append((prompt + best, [0.0] * len(prompt) + [1.0] * len(best)))
    reward, tokens = _sampled_stats(short)
    if not chosen:
        return rl.StepOutcome(None, reward, tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = supervised_loss(model, tok, s, rng, exclude, chosen)
    return rl.StepOutcome(loss, reward, tokens)


def length_rl_step(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    s: L2SSettings,
    rng: random.Random,
    exclude: frozenset[pb.Problem],
) -> rl.StepOutcome:
    """`l2s-rl`: the policy loss on short-mode groups with the length reward."""
    batch = rl.rollouts(model, tok, rl.problems_for_step(rng, s, exclude), s, rng, long=False)
    adv = rl.advantages(shaped_rewards(batch, s.group, s.length_weight), s.group)
    reward, tokens = _sampled_stats(batch)
    if not any(adv):
        return rl.StepOutcome(None, reward, tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = rl.policy_loss(model, tok.pad_token_id, batch, adv)
        if s.sft_examples:
            loss = loss + supervised_loss(model, tok, s, rng, exclude)
    return rl.StepOutcome(loss, reward, tokens)


def train(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    s: L2SSettings,
    on_eval: Callable[[int, float], None] | None = None,
    exclude: frozenset[pb.Problem] = frozenset(),
) -> dict[str, float]:
    """An `l2s-rs` or `l2s-rl` stage until its time budget is spent (statistics: `rl.run_stage`; the
    reward and tokens are the short-mode samples' correctness and length)."""
    steps = {"l2s-rs": rejection_step, "l2s-rl": length_rl_step}
    if s.kind not in steps:
        raise ValueError(f"unknown long2short kind {s.kind!r} (one of {', '.join(KINDS)})")
    method = steps[s.kind]
    return rl.run_stage(model, s, lambda rng: method(model, tok, s, rng, exclude), s.kind, on_eval)


# ---------------------------------------------------------------- model merging


def load(checkpoint: Path) -> Idefics3ForConditionalGeneration:
    return Idefics3ForConditionalGeneration.from_pretrained(str(checkpoint), dtype=torch.float32)


def merge(a: Path, b: Path, alpha: float) -> dict[str, torch.Tensor]:
    """``alpha``·A + (1 − ``alpha``)·B for every floating-point weight (other tensors: A's)."""
    sa, sb = load(a).state_dict(), load(b).state_dict()
    if sa.keys() != sb.keys():
        raise ValueError(f"{a} and {b} are not the same architecture")
    return {k: alpha * v + (1 - alpha) * sb[k] if v.is_floating_point() else v for k, v in sa.items()}


def write_checkpoint(model: Idefics3ForConditionalGeneration, like: Path, out: Path) -> None:
    """``model``'s weights with the side files (tokenizer, config, processor) of checkpoint ``like``."""
    from training import checksums
    from training.train import save_weights

    save_weights(model, out)
    for f in like.iterdir():
        if f.is_file() and f.name not in (
            "model.safetensors",
            "build_report.json",
            checksums.SUMS,
            "README.md",
        ):
            shutil.copy2(f, out / f.name)
    checksums.write_sums(out)


def write_merged(a: Path, b: Path, alpha: float, out: Path) -> None:
    model = load(a)
    model.load_state_dict(merge(a, b, alpha))
    write_checkpoint(model, a, out)


# ---------------------------------------------------------------- the comparison

CELLS: list[Cell] = [("long", "text", "hard"), ("short", "text", "hard"), ("short", "text", "easy")]
Row = dict[str, object]  # method, minutes, and per cell its evaluation (inproc_eval.evaluate)


def hard_ratio(table: dict[str, dict[str, float]]) -> float:
    """Short mode's mean output tokens on hard text problems over long mode's."""
    return table["short/text/hard"]["output_tokens"] / max(table["long/text/hard"]["output_tokens"], 1.0)


def meets_target(table: dict[str, dict[str, float]]) -> bool:
    """Issue #20's target: short mode ≥ 60 % on hard text problems at ≤ 25 % of long mode's tokens."""
    return table["short/text/hard"]["pass1"] >= 0.6 and hard_ratio(table) <= 0.25


def format_comparison(rows: list[Row]) -> str:
    cells = ["/".join(c) for c in CELLS]
    head = (
        "| method | minutes | "
        + " | ".join(f"{c} pass@1 | {c} tokens" for c in cells)
        + " | short/long tokens (hard) | target |"
    )
    lines = [head, "|" + "---|" * (4 + 2 * len(cells))]
    for row in rows:
        table = cast(dict[str, dict[str, float]], row["table"])
        values = " | ".join(f"{table[c]['pass1']:.0%} | {table[c]['output_tokens']:.0f}" for c in cells)
        met = "yes" if meets_target(table) else "no"
        lines.append(f"| {row['method']} | {row['minutes']} | {values} | {hard_ratio(table):.0%} | {met} |")
    return "\n".join(lines)


def plot(rows: list[Row], out: Path) -> None:
    """Accuracy against mean output tokens on hard text problems: a point per mode and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, row in enumerate(rows):
        table = cast(dict[str, dict[str, float]], row["table"])
        points = [
            (table[f"{m}/text/hard"]["output_tokens"], table[f"{m}/text/hard"]["pass1"])
            for m in ("long", "short")
        ]
        color = f"C{i % 10}"
        ax.plot([x for x, _ in points], [y * 100 for _, y in points], "--", color=color, alpha=0.4)
        for (x, y), mode, marker in zip(points, ("long", "short"), ("s", "o"), strict=True):
            ax.plot(x, y * 100, marker, color=color)
            ax.annotate(
                f"{row['method']} ({mode})",
                (x, y * 100),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=8,
            )
    base = cast(dict[str, dict[str, float]], rows[0]["table"])
    budget = 0.25 * base["long/text/hard"]["output_tokens"]
    ax.axhline(60, color="grey", lw=0.8, ls=":")
    ax.axvline(budget, color="grey", lw=0.8, ls=":")
    ax.text(budget, 61, " target: ≥ 60 % at ≤ 25 % of base long tokens", fontsize=7, color="grey")
    ax.set_xlabel("mean output tokens (hard text problems)")
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(-3, 103)
    widest = max(
        t["output_tokens"] for row in rows for t in cast(dict[str, dict[str, float]], row["table"]).values()
    )
    ax.set_xlim(0, widest * 1.3 + 1)  # room for the labels
    ax.set_title("long2short: accuracy against output length (greedy)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def compare(args: argparse.Namespace) -> int:
    from training import inproc_eval, render
    from training.build import resumed_tokenizer

    render.NORMALISED = not args.as_is_images
    args.out.mkdir(parents=True, exist_ok=True)
    tok = resumed_tokenizer(args.base)
    exclude = inproc_eval.eval_problems()
    rows: list[Row] = []

    def evaluate(method: str, minutes: float, model: Idefics3ForConditionalGeneration) -> None:
        t0 = time.monotonic()
        table = inproc_eval.evaluate(model, tok, n=args.n, seed=args.seed, cells=CELLS, max_new=args.max_new)
        rows.append({"method": method, "minutes": minutes, "table": table})
        print(f"[l2s] {method}: {inproc_eval.brief(table)}  short/long tokens (hard) {hard_ratio(table):.0%} "
              f"(eval {time.monotonic() - t0:.0f} s)", flush=True)  # fmt: skip

    evaluate("base", 0, load(args.base))
    if args.before_drill is not None:
        evaluate("before drill", 0, load(args.before_drill))
        merged = args.out / "merge"
        write_merged(args.before_drill, args.base, args.alpha, merged)
        print(f"[l2s] merge: {args.alpha:g}·before-drill + {1 - args.alpha:g}·base -> {merged}", flush=True)
        evaluate(f"merge α={args.alpha:g}", 0, load(merged))
    for kind in args.methods.split(","):
        model = load(args.base)
        lr = args.lr if args.lr is not None else DEFAULT_LR[kind]
        s = L2SSettings(kind=kind, minutes=args.minutes, lr=lr, seed=args.seed, eval_every_s=1e9)
        print(f"[l2s] {kind}: {args.minutes:g} min at lr {lr:g} from {args.base}", flush=True)
        stats = train(model, tok, s, exclude=exclude)
        print(f"[l2s] {kind}: {stats['steps']:.0f} steps ({stats['learning_steps']:.0f} learning); sampled "
              f"short reward {stats['reward_first']:.0%} -> {stats['reward_last']:.0%}, tokens "
              f"{stats['tokens_first']:.0f} -> {stats['tokens_last']:.0f}", flush=True)  # fmt: skip
        write_checkpoint(model, args.base, args.out / kind)
        evaluate(kind, args.minutes, model)
    table = format_comparison(rows)
    md = args.out / "long2short.md"
    md.write_text(
        f"Greedy, {args.n} held-out problems per cell (seed {args.seed}); base {args.base}.\n\n{table}\n\n"
        "![accuracy against mean output tokens](long2short.png)\n"
    )
    (args.out / "long2short.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.out / "long2short.png")
    print(table)
    print(f"[l2s] wrote {md}, {args.out / 'long2short.png'}, checkpoints under {args.out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    sub = ap.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="each method from the same base, evaluated: a table and a plot")
    cmp.add_argument("--base", type=Path, required=True, help="the checkpoint after the short-mode drill")
    cmp.add_argument("--before-drill", type=Path, default=None, help="the one before it (for the merge)")
    cmp.add_argument("--minutes", type=float, required=True, help="training time of each method")
    cmp.add_argument("--out", type=Path, required=True)
    cmp.add_argument("--methods", default=",".join(KINDS))
    cmp.add_argument("--lr", type=float, default=None, help="default: per method, " + str(DEFAULT_LR))
    cmp.add_argument("--alpha", type=float, default=0.5, help="the merge's weight of the before-drill model")
    cmp.add_argument("--n", type=int, default=100, help="held-out problems per cell")
    cmp.add_argument("--seed", type=int, default=7)
    cmp.add_argument("--max-new", type=int, default=500)
    cmp.add_argument("--as-is-images", action="store_true", help="images as drawn, not in the glyph grid")
    mrg = sub.add_parser("merge", help="alpha·A + (1 − alpha)·B, with A's side files")
    mrg.add_argument("a", type=Path)
    mrg.add_argument("b", type=Path)
    mrg.add_argument("--alpha", type=float, default=0.5)
    mrg.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "merge":
        write_merged(args.a, args.b, args.alpha, args.out)
        print(f"[l2s] wrote {args.out}")
        return 0
    return compare(args)


if __name__ == "__main__":
    raise SystemExit(main())
