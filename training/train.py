"""Training loop: plain PyTorch on CPU, both modes and both input kinds in one set of weights.

The learning-rate schedule runs on wall-clock time (warm-up, then cosine decay to the end of the time
budget) because the budget is in minutes on a shared 2-core machine whose speed varies; the data stream
itself is fixed by the seed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm
from transformers import Idefics3Config, Idefics3ForConditionalGeneration, PreTrainedTokenizerFast

from training import examples as E
from training import modelcfg as mc
from training import problems as pb
from training import vision as V
from training.render import Layout

# (ids, loss weights, attention mask, images, the images' reading labels); ids empty in `vision` stages
_Item = tuple[list[int], list[float], Image.Image | None, Layout | None]  # one encoded example
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Image.Image], torch.Tensor | None]
KINDS = ("mixed", "vision", "joint", "drill")
WARMUP_STEPS_PER_S = 2.0  # a stage with a step budget warms up over warmup_s * this many steps
LM_KINDS = ("mixed", "drill")  # stages with the language model's loss alone (no reading head)
READING_KINDS = ("vision", "joint")  # stages that train the reading head


@dataclass
class TrainSettings:
    minutes: float = 55.0
    # A step budget (0: none). With one, the stage ends after this many optimizer steps and the learning
    # rate follows the steps, so the stage is the same on a busy machine as on an idle one (only slower);
    # ``minutes`` then only caps it.
    steps: int = 0
    batch: int = 24
    lr: float = 1e-3
    warmup_s: float = 120.0
    min_lr_frac: float = 0.05
    weight_decay: float = 0.05
    eval_every_s: float = 600.0
    seed: int = 1234
    image_rate: float = 0.4  # of long-mode examples
    short_image_rate: float = 0.1
    long_rate: float = 0.5
    short_easy_rate: float = 0.5
    conversation_rate: float = 0.2  # examples with 1-3 earlier turns (answer the last question)
    tools_rate: float = 0.15  # examples offering tools (the calculator, mostly)
    ood_rate: float = 0.08  # out-of-domain prompts (the fixed refusal)
    hard_rate: float = 0.0  # problems drawn from the hard split (the largest sizes) instead of all sizes
    division_rate: float = 0.0  # problems that are divisions, besides the uniform draw's quarter
    pool: int = 8  # batches generated at once, then sorted by length to cut padding
    bf16: bool = True  # autocast matmuls to bfloat16 (about 1.5x faster on CPU)
    # What a stage trains. "mixed": the language model's loss on both modes and both input kinds.
    # "vision": the reading loss alone (see training/vision.py), on the vision tower and connector.
    # "joint": "mixed" plus reading-only examples and the reading loss on every image.
    # "drill": "mixed" plus short-mode easy problems (`drill_rate` of the examples, see
    # `examples.drill_example`), batched by a token budget so that the short ones come many at a time.
    kind: str = "mixed"
    reading_rate: float = 0.4  # joint: share of reading-only examples
    reading_weight: float = 1.0  # joint: the reading loss's weight next to the language model's
    vision_lr_mult: float = 5.0  # joint: the vision side is younger than the language model
    drill_rate: float = 0.7  # drill: share of short-mode easy examples
    drill_tokens: int = 24 * 256  # drill: padded tokens per batch


def new_model(cfg: Idefics3Config, seed: int) -> Idefics3ForConditionalGeneration:
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(cfg)
    model.to(torch.float32)
    return model


def make_pixel_fn(tok: PreTrainedTokenizerFast) -> Callable[[list[Image.Image]], torch.Tensor]:
    """Pixel values exactly as the shipped processor (and so the engine) makes them."""
    image_processor = mc.build_processor(tok).image_processor

    def fn(images: list[Image.Image]) -> torch.Tensor:
        out = image_processor([[im] for im in images], return_tensors="pt")
        return out["pixel_values"].reshape(1, len(images), 3, mc.IMAGE_SIDE, mc.IMAGE_SIDE)

    return fn


def batches(
    tok: PreTrainedTokenizerFast,
    s: TrainSettings,
    rng: random.Random,
    exclude: frozenset[pb.Problem] = frozenset(),
) -> Iterator[Batch]:
    """Endless stream of (ids, weights, attention, images) batches, length-sorted within a pool."""
    while True:
        pool: list[_Item] = []
        for _ in range(s.batch * s.pool):
            if s.kind == "drill" and rng.random() < s.drill_rate:
                ex = E.drill_example(rng, exclude)
            elif s.kind == "joint" and rng.random() < s.reading_rate:
                ex = E.reading_example(rng, exclude)
            else:
                ex = E.make_example(
                    rng,
                    image_rate=s.image_rate,
                    long_rate=s.long_rate,
                    short_easy_rate=s.short_easy_rate,
                    short_image_rate=s.short_image_rate,
                    conversation_rate=s.conversation_rate,
                    tools_rate=s.tools_rate,
                    ood_rate=s.ood_rate,
                    hard_rate=s.hard_rate,
                    division_rate=s.division_rate,
                    exclude=exclude,
                )
            ids, w = E.encode(ex, tok, rng)
            pool.append((ids[: mc.MAX_LEN], w[: mc.MAX_LEN], ex.image, ex.layout))
        pool.sort(key=lambda t: len(t[0]))
        if s.kind == "drill":
            chunks = _by_tokens(pool, s.drill_tokens)
        else:
            chunks = [pool[i : i + s.batch] for i in range(0, len(pool), s.batch)]
        rng.shuffle(chunks)
        for chunk in chunks:
            n = max(len(c[0]) for c in chunk)
            pad = tok.pad_token_id
            ids = torch.tensor([c[0] + [pad] * (n - len(c[0])) for c in chunk])
            weights = torch.tensor([c[1] + [0.0] * (n - len(c[1])) for c in chunk])
            attn = torch.tensor([[1] * len(c[0]) + [0] * (n - len(c[0])) for c in chunk])
            images = [c[2] for c in chunk if c[2] is not None]
            yield ids, weights, attn, images, _labels([c[3] for c in chunk if c[3] is not None])


def _by_tokens(pool: list[_Item], budget: int) -> list[list[_Item]]:
    """Length-sorted items cut into batches of at most ``budget`` padded tokens (at least one item)."""
    chunks: list[list[_Item]] = []
    for item in pool:
        if chunks and (len(chunks[-1]) + 1) * len(item[0]) <= budget:
            chunks[-1].append(item)
        else:
            chunks.append([item])
    return chunks


def image_batches(s: TrainSettings, rng: random.Random, exclude: frozenset[pb.Problem]) -> Iterator[Batch]:
    """Endless stream of image-only batches for a `vision` stage (no token ids)."""
    none = torch.zeros(0, dtype=torch.long)
    while True:
        exs = [E.reading_example(rng, exclude) for _ in range(s.batch)]
        images = [ex.image for ex in exs if ex.image is not None]
        yield none, none.float(), none, images, _labels([ex.layout for ex in exs if ex.layout is not None])


def _labels(layouts: list[Layout]) -> torch.Tensor | None:
    return torch.from_numpy(np.stack([V.cell_labels(lay) for lay in layouts])) if layouts else None


def loss_fn(
    model: Idefics3ForConditionalGeneration,
    ids: torch.Tensor,
    weights: torch.Tensor,
    attn: torch.Tensor,
    pixels: torch.Tensor | None,
    encoded: Any = None,
) -> torch.Tensor:
    """`encoded`: the images already through the vision tower (`vision.encode_images`), instead of
    `pixels`."""
    if encoded is not None:
        out = model(input_ids=ids, attention_mask=attn, mm_encoder_outputs={"image": encoded})
    else:
        out = model(input_ids=ids, attention_mask=attn, pixel_values=pixels)
    logits = out.logits[:, :-1].float()
    target, w = ids[:, 1:], weights[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none")
    return (nll * w.reshape(-1)).sum() / w.sum().clamp(min=1.0)


def lr_at(s: TrainSettings, elapsed: float, step: int = 0) -> float:
    """Warm-up, then cosine decay to ``min_lr_frac``: over the step budget when the stage has one (the
    warm-up then lasts ``warmup_s`` worth of steps at ``WARMUP_STEPS_PER_S``), else over the minutes."""
    if s.steps:
        elapsed, budget, warmup = float(step), float(s.steps), s.warmup_s * WARMUP_STEPS_PER_S
    else:
        budget, warmup = s.minutes * 60, s.warmup_s
    if elapsed < warmup:
        return s.lr * max(elapsed / warmup, 0.02)
    frac = min((elapsed - warmup) / max(budget - warmup, 1.0), 1.0)
    return s.lr * (s.min_lr_frac + (1 - s.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def _param_groups(
    model: Idefics3ForConditionalGeneration, head: torch.nn.Linear | None, s: TrainSettings
) -> list[dict[str, object]]:
    """AdamW groups, each with an `lr_mult`: a `vision` stage trains only the vision side and the
    reading head (the language model is frozen); `joint` trains everything, the vision side faster."""
    vision = {id(p) for p in V.vision_parameters(model)}
    extra = list(head.parameters()) if head is not None and s.kind not in LM_KINDS else []
    if s.kind == "vision":
        for p in model.parameters():
            p.requires_grad_(id(p) in vision)
        return [{"params": V.vision_parameters(model) + extra, "weight_decay": 0.01, "lr_mult": 1.0}]
    for p in model.parameters():
        p.requires_grad_(True)
    mult = s.vision_lr_mult if s.kind == "joint" else 1.0
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        decays = p.ndim >= 2 and "embed" not in name
        groups.setdefault((decays, id(p) in vision), []).append(p)
    out: list[dict[str, object]] = [
        {
            "params": params,
            "weight_decay": s.weight_decay if decays else 0.0,
            "lr_mult": mult if is_vision else 1.0,
        }
        for (decays, is_vision), params in groups.items()
    ]
    if extra:
        out.append({"params": extra, "weight_decay": 0.01, "lr_mult": mult})
    return out


class StageClock:
    """A stage's training time: wall-clock time minus the time its probes take, which does not count
    against the budget. ``probe`` runs ``on_eval(step, elapsed)`` every ``every_s`` of training time."""

    def __init__(self, every_s: float, on_eval: Callable[[int, float], None] | None) -> None:
        self.start = time.monotonic()
        self.probing = 0.0
        self.every_s, self.next_probe = every_s, every_s
        self.on_eval = on_eval

    def elapsed(self) -> float:
        return time.monotonic() - self.start - self.probing

    def probe(self, model: torch.nn.Module, step: int, elapsed: float) -> None:
        if self.on_eval is None or elapsed < self.next_probe:
            return
        t0 = time.monotonic()
        model.eval()
        self.on_eval(step, elapsed)
        model.train()
        self.probing += time.monotonic() - t0
        self.next_probe += self.every_s


def progress_bar(budget_s: float, kind: str) -> tqdm:  # type: ignore[type-arg]
    """A stage's progress over its time budget; the caller sets ``n`` (seconds) and the postfix."""
    return tqdm(
        total=int(budget_s),
        unit="s",
        desc=f"train ({kind})",
        mininterval=5,
        bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt}s [{elapsed}] {postfix}",
    )


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, max_norm: float = 1.0) -> None:
    """Back-propagate ``loss`` and step, the gradients of the optimizer's parameters clipped to
    ``max_norm`` (every training loop: supervised stages and `rl`)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], max_norm)
    opt.step()


def train(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    s: TrainSettings,
    on_eval: Callable[[int, float], None] | None = None,
    exclude: frozenset[pb.Problem] = frozenset(),
    head: torch.nn.Linear | None = None,
) -> dict[str, float]:
    """Train until the time budget is spent; ``on_eval(step, elapsed)`` runs every ``eval_every_s``.
    ``head``: the reading head (training/vision.py) for `vision` and `joint` stages."""
    assert s.kind in KINDS, s.kind
    assert s.kind in LM_KINDS or head is not None, "vision and joint stages need the reading head"
    rng = random.Random(s.seed)
    pixel_fn = make_pixel_fn(tok)
    groups = _param_groups(model, head, s)
    opt = torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.98))  # type: ignore[arg-type]
    model.train()
    clock = StageClock(s.eval_every_s, on_eval)
    step, ema, read_ema = 0, None, None
    budget = s.minutes * 60
    bar = progress_bar(budget, s.kind)
    stream = image_batches(s, rng, exclude) if s.kind == "vision" else batches(tok, s, rng, exclude)
    for ids, weights, attn, images, labels in stream:
        elapsed = clock.elapsed()
        if elapsed >= budget or (s.steps and step >= s.steps):
            break
        lr = lr_at(s, elapsed, step)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        pixels = pixel_fn(images) if images else None
        read_acc = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.bf16):
            if s.kind in LM_KINDS or pixels is None or labels is None or head is None:
                loss = loss_fn(model, ids, weights, attn, pixels)
            else:
                encoded = V.encode_images(model, pixels)
                loss, read_acc = V.reading_loss(head, V.image_tokens(encoded, len(images)), labels)
                if s.kind == "joint":
                    lm_loss = loss_fn(model, ids, weights, attn, None, encoded)
                    loss = lm_loss + s.reading_weight * loss
        optimizer_step(opt, loss)
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if read_acc is not None:
            read_ema = read_acc if read_ema is None else 0.98 * read_ema + 0.02 * read_acc
        bar.n = int(min(elapsed, budget))
        reading = "" if read_ema is None else f" read {read_ema:.0%}"
        bar.set_postfix_str(f"step {step} loss {ema:.3f}{reading} lr {lr:.1e}")
        clock.probe(model, step, elapsed)
    bar.close()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    stats = {"steps": float(step), "loss": float(ema or 0.0), "seconds": clock.elapsed()}
    if read_ema is not None:
        stats["reading_accuracy"] = float(read_ema)
    return stats


def save_weights(model: Idefics3ForConditionalGeneration, out: Path) -> None:
    """bf16 safetensors via save_pretrained (the size limit is 25 MB; fp32 would not fit)."""
    out.mkdir(parents=True, exist_ok=True)
    copy = Idefics3ForConditionalGeneration(model.config)
    copy.load_state_dict(model.state_dict())
    copy.to(torch.bfloat16)
    copy.config.dtype = "bfloat16"
    copy.save_pretrained(str(out), safe_serialization=True)
