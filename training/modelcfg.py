"""The architecture (Idefics3: SigLIP-style vision tower + Llama text model) and the checkpoint's config
files (processor, generation config)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import (
    GenerationConfig,
    Idefics3Config,
    Idefics3Processor,
    LlamaConfig,
    PreTrainedTokenizerFast,
)
from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

# The PIL image processor: the default one needs torchvision, which is not installed here.
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

# The image geometry is the model's own rule, shared with the gateway's image layout: defined there once.
from app.profiles.thinkgate_arith import IMAGE_SIDE, PATCH, SCALE
from training import tokenizer as tk

IMAGE_SEQ_LEN = (IMAGE_SIDE // PATCH) ** 2 // SCALE**2
MAX_LEN = 1024


@dataclass(frozen=True)
class Size:
    # Sized for ~1 hour of training on 2 shared CPU cores: more steps beat more parameters here.
    hidden: int = 256
    layers: int = 4
    heads: int = 8
    ffn: int = 768
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    vision_ffn: int = 512


def build_config(tok: PreTrainedTokenizerFast, size: Size) -> Idefics3Config:
    ids = {t: tok.convert_tokens_to_ids(t) for t in (tk.PAD, tk.IM_END, tk.IMAGE)}
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=size.hidden,
        intermediate_size=size.ffn,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=MAX_LEN,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=ids[tk.PAD],
        bos_token_id=None,
        eos_token_id=ids[tk.IM_END],
    )
    vision = Idefics3VisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_ffn,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=IMAGE_SIDE,
        patch_size=PATCH,
    )
    cfg = Idefics3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        scale_factor=SCALE,
        image_token_id=ids[tk.IMAGE],
        pad_token_id=ids[tk.PAD],
        tie_word_embeddings=False,
    )
    cfg.dtype = "bfloat16"
    return cfg


def build_processor(tok: PreTrainedTokenizerFast) -> Idefics3Processor:
    image_processor = Idefics3ImageProcessorPil(
        do_resize=True,
        size={"longest_edge": IMAGE_SIDE},
        max_image_size={"longest_edge": IMAGE_SIDE},
        do_image_splitting=False,
        do_convert_rgb=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=tk.CHAT_TEMPLATE,
    )


def generation_config(tok: PreTrainedTokenizerFast) -> GenerationConfig:
    # Greedy decoding: arithmetic traces have one right next token; sampling only adds slips.
    return GenerationConfig(
        do_sample=False,
        eos_token_id=tok.convert_tokens_to_ids(tk.IM_END),
        pad_token_id=tok.convert_tokens_to_ids(tk.PAD),
        max_new_tokens=768,
    )


def save_side_files(out: Path, tok: PreTrainedTokenizerFast, cfg: Idefics3Config) -> None:
    """Everything but the weights: tokenizer, chat template, processor, config, generation config."""
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    build_processor(tok).save_pretrained(str(out))
    cfg.save_pretrained(str(out))
    generation_config(tok).save_pretrained(str(out))
    # transformers 5 no longer writes this file; older loaders and other tools still read it.
    special = {
        "eos_token": tk.IM_END,
        "pad_token": tk.PAD,
        "additional_special_tokens": [tk.IMAGE, tk.FAKE_IMAGE, tk.END_OF_UTTERANCE],
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
