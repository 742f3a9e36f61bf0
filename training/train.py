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

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm
from transformers import Idefics3Config, Idefics3ForConditionalGeneration, PreTrainedTokenizerFast

from training import examples as E
from training import modelcfg as mc
from training import problems as pb

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Image.Image]]


@dataclass
class TrainSettings:
    minutes: float = 55.0
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
    pool: int = 8  # batches generated at once, then sorted by length to cut padding
    bf16: bool = True  # autocast matmuls to bfloat16 (about 1.5x faster on CPU)


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
        pool = []
        for _ in range(s.batch * s.pool):
            ex = E.make_example(
                rng,
                image_rate=s.image_rate,
                long_rate=s.long_rate,
                short_easy_rate=s.short_easy_rate,
                short_image_rate=s.short_image_rate,
                exclude=exclude,
            )
            ids, w = E.encode(ex, tok, rng)
            pool.append((ids[: mc.MAX_LEN], w[: mc.MAX_LEN], ex.image))
        pool.sort(key=lambda t: len(t[0]))
        chunks = [pool[i : i + s.batch] for i in range(0, len(pool), s.batch)]
        rng.shuffle(chunks)
        for chunk in chunks:
            n = max(len(c[0]) for c in chunk)
            pad = tok.pad_token_id
            ids = torch.tensor([c[0] + [pad] * (n - len(c[0])) for c in chunk])
            weights = torch.tensor([c[1] + [0.0] * (n - len(c[1])) for c in chunk])
            attn = torch.tensor([[1] * len(c[0]) + [0] * (n - len(c[0])) for c in chunk])
            images = [c[2] for c in chunk if c[2] is not None]
            yield ids, weights, attn, images


def loss_fn(
    model: Idefics3ForConditionalGeneration,
    ids: torch.Tensor,
    weights: torch.Tensor,
    attn: torch.Tensor,
    pixels: torch.Tensor | None,
) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=attn, pixel_values=pixels)
    logits = out.logits[:, :-1].float()
    target, w = ids[:, 1:], weights[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none")
    return (nll * w.reshape(-1)).sum() / w.sum().clamp(min=1.0)


def lr_at(s: TrainSettings, elapsed: float) -> float:
    budget = s.minutes * 60
    if elapsed < s.warmup_s:
        return s.lr * max(elapsed / s.warmup_s, 0.02)
    frac = min((elapsed - s.warmup_s) / max(budget - s.warmup_s, 1.0), 1.0)
    return s.lr * (s.min_lr_frac + (1 - s.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def train(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    s: TrainSettings,
    on_eval: Callable[[int, float], None] | None = None,
    exclude: frozenset[pb.Problem] = frozenset(),
) -> dict[str, float]:
    """Train until the time budget is spent; ``on_eval(step, elapsed)`` runs every ``eval_every_s``."""
    rng = random.Random(s.seed)
    pixel_fn = make_pixel_fn(tok)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=s.lr,
        betas=(0.9, 0.98),
    )
    model.train()
    start = time.monotonic()
    eval_time = 0.0  # time spent evaluating does not count against the training budget
    next_eval = s.eval_every_s
    step, ema = 0, None
    budget = s.minutes * 60
    bar = tqdm(
        total=int(budget),
        unit="s",
        desc="train",
        mininterval=5,
        bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt}s [{elapsed}] {postfix}",
    )
    for ids, weights, attn, images in batches(tok, s, rng, exclude):
        elapsed = time.monotonic() - start - eval_time
        if elapsed >= budget:
            break
        lr = lr_at(s, elapsed)
        for g in opt.param_groups:
            g["lr"] = lr
        pixels = pixel_fn(images) if images else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.bf16):
            loss = loss_fn(model, ids, weights, attn, pixels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.n = int(min(elapsed, budget))
        bar.set_postfix_str(f"step {step} loss {ema:.3f} lr {lr:.1e}")
        if on_eval is not None and elapsed >= next_eval:
            t0 = time.monotonic()
            model.eval()
            on_eval(step, elapsed)
            model.train()
            eval_time += time.monotonic() - t0
            next_eval += s.eval_every_s
    bar.close()
    model.eval()
    return {"steps": float(step), "loss": float(ema or 0.0), "seconds": time.monotonic() - start - eval_time}


def save_weights(model: Idefics3ForConditionalGeneration, out: Path) -> None:
    """bf16 safetensors via save_pretrained (the size limit is 25 MB; fp32 would not fit)."""
    out.mkdir(parents=True, exist_ok=True)
    copy = Idefics3ForConditionalGeneration(model.config)
    copy.load_state_dict(model.state_dict())
    copy.to(torch.bfloat16)
    copy.config.dtype = "bfloat16"
    copy.save_pretrained(str(out), safe_serialization=True)
