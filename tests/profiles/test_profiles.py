"""Model profiles: every shipped file loads, families resolve, bad files are refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.metering.prices import TokenCounts, cost_micros, format_usd, worst_case_micros
from app.profiles.profile import ProfileError, ProfileRegistry, parse_profile

PROFILES = ProfileRegistry.from_dir(Path(__file__).resolve().parents[2] / "models" / "profiles")


def test_every_family_is_shipped() -> None:
    names = {p.name for p in PROFILES.profiles}
    assert {"thinkgate-arith", "qwen3", "deepseek-v3.1", "kimi", "deepseek-r1", "plain"} <= names


@pytest.mark.parametrize(
    ("model", "profile"),
    [
        ("thinkgate-arith", "thinkgate-arith"),
        ("Qwen/Qwen3-8B", "qwen3"),
        ("deepseek-ai/DeepSeek-V3.1", "deepseek-v3.1"),
        ("kimi-k2-thinking", "kimi"),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "deepseek-r1"),
        ("meta-llama/Llama-3.1-8B-Instruct", "plain"),
    ],
)
def test_models_resolve_to_their_family(model: str, profile: str) -> None:
    assert PROFILES.for_model(model).name == profile


def test_switches_become_upstream_fields() -> None:
    assert PROFILES.by_name("qwen3").upstream_switch("short") == {
        "chat_template_kwargs": {"enable_thinking": False}
    }
    assert PROFILES.by_name("deepseek-v3.1").upstream_switch("long") == {
        "chat_template_kwargs": {"thinking": True}
    }
    assert PROFILES.by_name("kimi").upstream_switch("long") == {"thinking": {"type": "enabled"}}
    assert PROFILES.by_name("deepseek-r1").always_thinks
    assert not PROFILES.by_name("plain").reasoning


def test_only_the_bundled_model_redraws_its_images() -> None:
    assert PROFILES.by_name("thinkgate-arith").image_layout == "glyph-grid"
    assert {p.image_layout for p in PROFILES.profiles if p.name != "thinkgate-arith"} == {"as-is"}


def test_bundled_model_prices_long_dearer_than_short() -> None:
    prices = PROFILES.by_name("thinkgate-arith").prices
    assert prices["long"].reasoning_output > prices["short"].reasoning_output > 0
    assert prices["long"].answer_output > prices["short"].answer_output > 0


def test_bad_profiles_are_refused() -> None:
    with pytest.raises(ProfileError, match="name"):
        parse_profile({"match": ["x"]})
    with pytest.raises(ProfileError, match="non-negative integers"):
        parse_profile({"name": "x", "prices": {"long": {"input": 1.5}}})
    with pytest.raises(ProfileError, match="unknown price kinds"):
        parse_profile({"name": "x", "prices": {"long": {"inptu": 1}}})
    with pytest.raises(ProfileError, match="image_layout is one of as-is, glyph-grid, not 'grid'"):
        parse_profile({"name": "x", "image_layout": "grid"})
    with pytest.raises(ProfileError, match="either"):
        parse_profile({"name": "x", "thinking": {"switch": "a", "on": {"b": 1}}})


def test_costs_are_exact_integers_rounded_up_once() -> None:
    prices = PROFILES.by_name("thinkgate-arith").prices["long"]
    counts = TokenCounts(prompt=30, reasoning=200, answer=7)
    exact = 30 * prices.input + 207 * prices.reasoning_output
    assert cost_micros(prices, counts) == -(-exact // 1_000_000)
    assert isinstance(cost_micros(prices, counts), int)
    assert cost_micros(prices, TokenCounts()) == 0


def test_worst_case_bounds_every_split() -> None:
    prices = PROFILES.by_name("thinkgate-arith").prices["long"]
    bound = worst_case_micros(prices, 100, 50)
    for image in (0, 67):
        for reasoning in (0, 25, 50):
            counts = TokenCounts(prompt=100, image=image, reasoning=reasoning, answer=50 - reasoning)
            assert cost_micros(prices, counts) <= bound


def test_format_usd() -> None:
    assert format_usd(1_234_567) == "1.234567"
    assert format_usd(5) == "0.000005"
