"""The bundled model's tokenizer, chat template and processor: both reasoning modes render the Qwen3 way,
special tokens stay single tokens, images expand to the configured number of image tokens, and the
training code renders prompts exactly as the shipped template does."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from training import examples as E  # noqa: E402
from training import tokenizer as tk  # noqa: E402

MODEL = ROOT / "models" / "thinkgate-arith"


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(MODEL))


@pytest.fixture(scope="module")
def tok(processor):
    return processor.tokenizer


USER = [{"role": "user", "content": "What is 12 + 34?"}]


def test_short_mode_renders_an_empty_think_block(tok) -> None:
    text = tok.apply_chat_template(USER, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "What is 12 + 34?" in text


@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": True}])
def test_long_mode_opens_the_think_block(tok, kwargs: dict[str, bool]) -> None:
    text = tok.apply_chat_template(USER, tokenize=False, add_generation_prompt=True, **kwargs)
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    assert "</think>" not in text


def test_think_markers_are_single_tokens_kept_when_decoding(tok) -> None:
    for marker in ("<think>", "</think>", "<|im_end|>", "<image>"):
        ids = tok.encode(marker, add_special_tokens=False)
        assert len(ids) == 1, marker
    ids = tok.encode("<think>\n1+2</think>\n\nThe answer is 3.", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "<think>\n1+2</think>\n\nThe answer is 3."


def test_a_trained_tokenizer_keeps_the_tool_call_markers_whole() -> None:
    """The tokenizer `make model` trains: the Hermes/Qwen3 markers are single tokens, kept when
    decoding (vLLM's `hermes` parser reads them in the text). The shipped first-generation tokenizer
    predates them."""
    built = tk.wrap(tk.train_tokenizer(E.corpus(random.Random(0), 200)))
    for marker in ("<think>", "</think>", *tk.TOOL_TOKENS):
        assert len(built.encode(marker, add_special_tokens=False)) == 1, marker
    text = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12*3"}}\n</tool_call>'
    assert built.decode(built.encode(text, add_special_tokens=False), skip_special_tokens=True) == text


def test_digits_are_single_tokens(tok) -> None:
    ids = tok.encode("What is 123456 + 654321?", add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("123456654321")


def test_earlier_assistant_turns_are_rendered_without_their_thinking(tok) -> None:
    messages = [*USER, {"role": "assistant", "content": "<think>\n2+4+0=6,0\n</think>\n\nThe answer is 46."},
                {"role": "user", "content": "What is 1 + 1?"}]  # fmt: skip
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "2+4+0" not in text and "The answer is 46.<|im_end|>" in text


def test_an_image_part_expands_to_the_configured_image_tokens(processor) -> None:
    from PIL import Image

    config = json.loads((MODEL / "config.json").read_text())
    vision = config["vision_config"]
    expected = (vision["image_size"] // vision["patch_size"]) ** 2 // config["scale_factor"] ** 2
    assert processor.image_seq_len == expected <= 64
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Solve the problem in the image."}],
        }
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False)
    inputs = processor(text=text, images=[[Image.new("RGB", (200, 96), "white")]], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(config["image_token_id"]) == expected
    assert tuple(inputs["pixel_values"].shape[-2:]) == (vision["image_size"], vision["image_size"])


def test_training_renders_prompts_exactly_like_the_shipped_template(tok) -> None:
    rng = random.Random(0)
    for _ in range(300):
        ex = E.make_example(rng, image_rate=0.4, ood_rate=0.1, conversation_rate=0.3, tools_rate=0.3)
        rendered = tok.apply_chat_template(
            E.messages(ex),
            tools=ex.tools,
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=ex.long,
        )
        assert rendered == E.prompt_text(ex)


def test_generation_stops_at_the_end_of_turn_token(tok) -> None:
    generation = json.loads((MODEL / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")


def test_a_resumed_build_keeps_the_checkpoints_tokenizer(tok, tmp_path: Path) -> None:
    """`build.py --resume` trains on with the checkpoint's own token ids (a rebuilt tokenizer would
    follow any change to the training text, and renumber the tokens under the weights)."""
    from training import build
    from training import problems as pb
    from training import traces as tr

    shutil.copytree(MODEL, tmp_path / "ckpt")
    vocab = json.loads((tmp_path / "ckpt" / "tokenizer.json").read_text())
    ids = vocab["model"]["vocab"]
    ids["3"], ids["7"] = ids["7"], ids["3"]  # another tokenizer: two digits swap ids
    (tmp_path / "ckpt" / "tokenizer.json").write_text(json.dumps(vocab))
    resumed = build.resumed_tokenizer(MODEL)
    text = (
        E.prompt_text(E.make_example(random.Random(3)))
        + tr.long_trace(pb.Problem(79, "*", 64), random.Random(0)).thinking
    )
    assert resumed.encode(text) == tok.encode(text)
    assert resumed.get_vocab() == tok.get_vocab() and resumed.chat_template == tok.chat_template
    changed = build.resumed_tokenizer(tmp_path / "ckpt")
    assert changed.encode("37") == resumed.encode("73")  # it really reads the checkpoint's file
