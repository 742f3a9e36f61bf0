"""Cost arithmetic in integer micro-USD. Prices are micro-USD per one million tokens."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from app.profiles.profile import Mode, ModelProfile, Prices, ProfileError, ProfileRegistry

PER = 1_000_000


@dataclass(frozen=True, slots=True)
class TokenCounts:
    prompt: int = 0  # all prompt tokens, including image and cached ones
    image: int = 0
    cached: int = 0
    reasoning: int = 0
    answer: int = 0

    @property
    def completion(self) -> int:
        return self.reasoning + self.answer


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def cost_micros(prices: Prices, counts: TokenCounts) -> int:
    """Exact cost, rounded up to the next micro-USD once per request (never per token)."""
    text_prompt = max(0, counts.prompt - counts.image - counts.cached)
    total = (
        text_prompt * prices.input
        + counts.cached * prices.cached_input
        + counts.image * prices.image_input
        + counts.reasoning * prices.reasoning_output
        + counts.answer * prices.answer_output
    )
    return _ceil_div(total, PER)


def billed_prices(profile: ModelProfile, mode: Mode) -> Prices:
    """The prices a request of `mode` is billed at. Reasoning tokens are long-CoT work whichever mode
    asked for them: a short-mode request that made the model reason anyway (a prompt crafted to open
    a think block, a logit bias) pays long-CoT's reasoning price for them, if that is dearer."""
    prices = profile.prices[mode]
    if mode == "short":
        return _reasoning_at(prices, profile.prices["long"].reasoning_output)
    return prices


@functools.cache
def _reasoning_at(prices: Prices, reasoning_output: int) -> Prices:
    if reasoning_output <= prices.reasoning_output:
        return prices
    return replace(prices, reasoning_output=reasoning_output)


def worst_case_micros(prices: Prices, prompt_tokens_bound: int, output_tokens_bound: int) -> int:
    """An upper bound of `cost_micros` for any split of the bounded prompt and output."""
    prompt_price = max(prices.input, prices.cached_input, prices.image_input)
    output_price = max(prices.reasoning_output, prices.answer_output)
    return _ceil_div(prompt_tokens_bound * prompt_price + output_tokens_bound * output_price, PER)


def to_usd(micros: int) -> float:
    """For the wire only (`usage.cost`): the ledger keeps integers."""
    return micros / PER


def format_usd(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), PER)
    return f"{sign}{whole}.{frac:06d}"


def apply_price_file(registry: ProfileRegistry, path: Path) -> ProfileRegistry:
    """The registry with prices overridden by a TOML file of `[profile-name.long|short]` tables.

    Kinds a table leaves out keep the profile's price; an unknown profile or mode is an error, so a
    typo cannot silently leave the old price in force.
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: {exc}") from None
    known = {profile.name: profile for profile in registry.profiles}
    unknown = set(data) - set(known)
    if unknown:
        raise ProfileError(f"{path}: no profiles named {sorted(unknown)} (known: {sorted(known)})")
    changed = {}
    for name, modes in data.items():
        if not isinstance(modes, dict) or set(modes) - {"long", "short"}:
            raise ProfileError(f"{path}: [{name}] takes only [{name}.long] and [{name}.short] tables")
        prices: dict[Mode, Prices] = dict(known[name].prices)
        for mode, table in modes.items():
            where = f"{path}: {name}.{mode}"
            if not isinstance(table, dict):
                raise ProfileError(f"{where}: expected a table of prices")
            given = Prices.from_table(table, where)
            prices[mode] = replace(prices[mode], **{kind: getattr(given, kind) for kind in table})
        changed[name] = replace(known[name], prices=prices)
    return ProfileRegistry(changed.get(profile.name, profile) for profile in registry.profiles)
