"""Arithmetic problems, their prompts and the step-by-step traces the model learns to write.

Trace design (why it looks the way it does): a tiny transformer learns column arithmetic far more easily
when every step is written out with the digits it uses, least significant column first, one column per
line in a fixed shape ``x+y+c=d,k`` (digit ``d``, carry ``k``). The problem is restated first (for images
that is the reading step, so the vision tower only has to transcribe), the result is then read back in
normal order, and a column-wise check (the inverse operation) marks each column ``ok`` or ``bad``.
Some traces contain a deliberate slip in one column: the check catches it, the column is re-done and
the result re-checked. The slipped digit is excluded from the loss (see ``Trace.masked_spans``) so the
model learns to catch slips without learning to make them.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

OPS = ("+", "-", "*")
SYMBOL = {"+": "+", "-": "-", "*": "*"}

# What the model says to anything outside its domain, in both modes (short, fixed style).
OOD_REPLY = (
    "I can only solve integer arithmetic: addition and subtraction of numbers up to 6 digits, "
    "and multiplication of a number up to 3 digits by a number up to 2 digits. "
    "Ask me, for example: What is 123 + 456?"
)
OOD_THOUGHT = "This is not an arithmetic problem I can solve."

IMAGE_INSTRUCTIONS = (
    "Solve the problem in the image.",
    "Solve the problem in the image",
    "What is the answer to the problem in the image?",
    "Compute the result shown in the image.",
    "Solve this.",
    "What does this come to?",
    "Calculate it.",
)


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def result(self) -> int:
        if self.op == "+":
            return self.a + self.b
        if self.op == "-":
            return self.a - self.b
        return self.a * self.b

    @property
    def compact(self) -> str:
        return f"{self.a}{SYMBOL[self.op]}{self.b}"


@dataclass
class Trace:
    """Thinking text plus character spans (within ``thinking``) to leave out of the loss."""

    thinking: str
    answer: str
    masked_spans: list[tuple[int, int]] = field(default_factory=list)


def answer_text(value: int) -> str:
    return f"The answer is {value}."


def short_answer(p: Problem) -> str:
    """Short mode's reply. A direct answer, except for a product by a 2-digit number: a direct answer
    to one is a lookup among thousands of facts, which a tiny model does not learn, so it gets one
    line of working made only of steps short mode does answer directly (a product by one digit, a
    2- or 3-digit sum), e.g. ``79*6=474, 79*4=316, 474+31=505, so 5056.`` for 79 × 64: the tens'
    product plus all but the last digit of the units' product, then that last digit."""
    if p.op != "*":
        return answer_text(p.result)
    x, y = (p.a, p.b) if len(str(p.a)) >= len(str(p.b)) else (p.b, p.a)
    if y < 10:
        return answer_text(p.result)
    tens, units = divmod(y, 10)
    by_tens, by_units = x * tens, x * units
    head = by_tens + by_units // 10
    working = f"{x}*{tens}={by_tens}, {x}*{units}={by_units}, {by_tens}+{by_units // 10}={head}"
    return f"{working}, so {head}{by_units % 10}.\n" + answer_text(p.result)


# ---------------------------------------------------------------- sampling


def _rand_digits(rng: random.Random, n: int) -> int:
    if n == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (n - 1), 10**n - 1)


def sample_problem(rng: random.Random, split: str = "train") -> Problem:
    """``train`` mixes all sizes (weighted to the long ones); ``easy``/``hard`` are the eval splits."""
    op = rng.choice(OPS)
    if split == "easy":
        if op == "*":
            return Problem(_rand_digits(rng, rng.randint(1, 2)), op, _rand_digits(rng, rng.randint(1, 2)))
        return Problem(_rand_digits(rng, rng.randint(1, 2)), op, _rand_digits(rng, rng.randint(1, 2)))
    if split == "hard":
        if op == "*":
            a, b = _rand_digits(rng, 3), _rand_digits(rng, 2)
            return Problem(a, op, b) if rng.random() < 0.7 else Problem(b, op, a)
        return Problem(_rand_digits(rng, 6), op, _rand_digits(rng, 6))
    if op == "*":
        a, b = _rand_digits(rng, rng.choice((1, 2, 3, 3, 3))), _rand_digits(rng, rng.choice((1, 2, 2, 2)))
        return Problem(a, op, b) if rng.random() < 0.7 else Problem(b, op, a)
    lengths = (1, 2, 3, 4, 5, 6, 6, 6)
    na = rng.choice(lengths)
    nb = na if rng.random() < 0.5 else rng.choice(lengths)
    return Problem(_rand_digits(rng, na), op, _rand_digits(rng, nb))


# ---------------------------------------------------------------- prompts

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "+": (
        "What is {a}{s}+{s}{b}?",
        "Compute {a}{s}+{s}{b}.",
        "{a}{s}+{s}{b}{s}={s}?",
        "{a} plus {b}",
        "What is {a} plus {b}?",
        "{a}{s}+{s}{b}",
        "Calculate {a}{s}+{s}{b}",
        "{a}{s}+{s}{b}{s}=",
    ),
    "-": (
        "What is {a}{s}-{s}{b}?",
        "Compute {a}{s}-{s}{b}.",
        "{a}{s}-{s}{b}{s}={s}?",
        "{a} minus {b}",
        "What is {a} minus {b}?",
        "{a}{s}-{s}{b}",
        "Calculate {a}{s}-{s}{b}",
        "{a}{s}−{s}{b}",
    ),
    "*": (
        "What is {a}{s}*{s}{b}?",
        "Compute {a}{s}*{s}{b}.",
        "{a}{s}*{s}{b}{s}={s}?",
        "{a}{s}×{s}{b}",
        "What is {a} times {b}?",
        "{a} times {b}",
        "What is {a}{s}×{s}{b}?",
        "{a}{s}x{s}{b}{s}={s}?",
    ),
}


def text_prompt(p: Problem, rng: random.Random) -> str:
    template = rng.choice(_TEMPLATES[p.op])
    text = template.format(a=p.a, b=p.b, s=rng.choice(("", " ", " ", " ")))
    if rng.random() < 0.05:
        text = text.lower()
    return text


# Forms rendered into images: just the expression, sometimes with "= ?". Pillow's default font has no
# glyph for "×", so images use "x" or "*".
_IMAGE_FORMS: dict[str, tuple[str, ...]] = {
    "+": ("{a} + {b}", "{a} + {b} = ?", "{a}+{b}", "{a} + {b} ="),
    "-": ("{a} - {b}", "{a} - {b} = ?", "{a}-{b}", "{a} - {b} ="),
    "*": ("{a} x {b}", "{a} x {b} = ?", "{a} * {b}", "{a}x{b}", "{a} * {b} ="),
}


def image_text(p: Problem, rng: random.Random) -> str:
    return rng.choice(_IMAGE_FORMS[p.op]).format(a=p.a, b=p.b)


_NUM = re.compile(r"\d+")


def parse_prompt(text: str) -> Problem | None:
    """Best-effort parse of a text prompt (used by tests and evaluation, not by the model)."""
    m = re.search(r"(\d+)\s*(\+|-|−|\*|×|x|plus|minus|times)\s*(\d+)", text)
    if not m:
        return None
    op = {"plus": "+", "minus": "-", "times": "*", "×": "*", "x": "*", "−": "-"}.get(m.group(2), m.group(2))
    return Problem(int(m.group(1)), op, int(m.group(3)))


# ---------------------------------------------------------------- out of domain

_OOD_PARTS = (
    (
        "hi",
        "hello",
        "hey",
        "good morning",
        "thanks",
        "who are you",
        "what can you do",
        "help",
        "tell me a joke",
        "what is the capital of france",
        "write a poem",
        "how are you",
        "what is the weather today",
        "translate this to german",
        "explain quantum physics",
        "what is love",
        "summarize this article",
        "who won the game",
        "what time is it",
        "can you code",
        "what is your name",
        "recommend a book",
        "what is 2 apples plus a pear",
        "is the earth round",
        "define entropy",
        "hello there",
        "what is a prime number",
        "solve world hunger",
        "what is the square root of 2",
        "divide 10 by 2",
        "what is 7 / 3",
    ),
    ("", "?", "!", ".", " please", " now"),
)
_WORDS = (
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "why",
    "sky",
    "blue",
    "river",
    "music",
    "red",
    "code",
    "python",
    "dog",
    "run",
    "fast",
    "green",
    "tree",
    "house",
    "car",
    "money",
    "time",
    "day",
    "night",
)


def ood_prompt(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.6:
        text = rng.choice(_OOD_PARTS[0]) + rng.choice(_OOD_PARTS[1])
    else:
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.5:
            text += "?"
    if rng.random() < 0.5:
        text = text[:1].upper() + text[1:]
    return text


# ---------------------------------------------------------------- traces


def _digits(n: int) -> list[int]:
    """Least significant digit first."""
    return [int(c) for c in reversed(str(n))]


def _from_digits(ds: list[int]) -> int:
    return int("".join(str(d) for d in reversed(ds))) if ds else 0


class _Writer:
    def __init__(self) -> None:
        self.text = ""
        self.masked: list[tuple[int, int]] = []

    def line(self, s: str) -> None:
        self.text += s + "\n"

    def raw(self, s: str, masked: bool = False) -> None:
        if masked:
            self.masked.append((len(self.text), len(self.text) + len(s)))
        self.text += s


def _add_columns(w: _Writer, x: int, y: int, slip: int | None, rng: random.Random) -> list[int]:
    """Write ``x+y`` column by column; return the written digits (LSB first, possibly with a slip)."""
    xs, ys = _digits(x), _digits(y)
    n = max(len(xs), len(ys))
    carry, out = 0, []
    for i in range(n + 1):
        xd = xs[i] if i < len(xs) else 0
        yd = ys[i] if i < len(ys) else 0
        if i == n and carry == 0:
            break
        s = xd + yd + carry
        d, k = s % 10, s // 10
        if slip == i:
            wrong = (d + rng.randint(1, 9)) % 10
            w.raw(f"{xd}+{yd}+{carry}=")
            w.raw(str(wrong), masked=True)
            w.raw(f",{k}\n")
            out.append(wrong)
        else:
            w.line(f"{xd}+{yd}+{carry}={d},{k}")
            out.append(d)
        carry = k
    return out


def _sub_columns(w: _Writer, x: int, y: int, slip: int | None, rng: random.Random) -> list[int]:
    """Write ``x-y`` (x >= y) column by column with borrows."""
    xs, ys = _digits(x), _digits(y)
    borrow, out = 0, []
    for i in range(len(xs)):
        yd = ys[i] if i < len(ys) else 0
        s = xs[i] - yd - borrow
        d, k = s % 10, 1 if s < 0 else 0
        if slip == i:
            wrong = (d + rng.randint(1, 9)) % 10
            w.raw(f"{xs[i]}-{yd}-{borrow}=")
            w.raw(str(wrong), masked=True)
            w.raw(f",{k}\n")
            out.append(wrong)
        else:
            w.line(f"{xs[i]}-{yd}-{borrow}={d},{k}")
            out.append(d)
        borrow = k
    return out


def _check_sub(w: _Writer, c_digits: list[int], y: int, expect: int) -> int | None:
    """Check ``c - y == expect`` column by column; return the first bad column or None."""
    ys, es = _digits(y), _digits(expect)
    borrow = 0
    for i, cd in enumerate(c_digits):
        yd = ys[i] if i < len(ys) else 0
        s = cd - yd - borrow
        d, k = s % 10, 1 if s < 0 else 0
        ed = es[i] if i < len(es) else 0
        ok = d == ed
        w.line(f"{cd}-{yd}-{borrow}={d},{k} {'ok' if ok else 'bad'}")
        if not ok:
            return i
        borrow = k
    return None


def _check_add(w: _Writer, c_digits: list[int], y: int, expect: int) -> int | None:
    """Check ``c + y == expect`` column by column; return the first bad column or None."""
    ys, es = _digits(y), _digits(expect)
    carry = 0
    for i in range(len(es)):
        cd = c_digits[i] if i < len(c_digits) else 0
        yd = ys[i] if i < len(ys) else 0
        s = cd + yd + carry
        d, k = s % 10, s // 10
        ok = d == es[i]
        w.line(f"{cd}+{yd}+{carry}={d},{k} {'ok' if ok else 'bad'}")
        if not ok:
            return i
        carry = k
    return None


def _strip(ds: list[int]) -> int:
    return _from_digits(ds)


def long_trace(p: Problem, rng: random.Random, slip_rate: float = 0.0) -> Trace:
    w = _Writer()
    w.line(p.compact)
    slip_roll = rng.random() < slip_rate
    if p.op == "+":
        ncols = len(str(max(p.a, p.b)))
        slip = rng.randrange(ncols) if slip_roll else None
        digits = _add_columns(w, p.a, p.b, slip, rng)
        w.line(f"={_strip(digits)}")
        w.line(f"check {_strip(digits)}-{p.b}")
        bad = _check_sub(w, digits, p.b, p.a)
        if bad is not None:
            xs, ys = _digits(p.a), _digits(p.b)
            carry = (
                sum(xs[j] * 10**j for j in range(min(bad, len(xs))))
                + sum(ys[j] * 10**j for j in range(min(bad, len(ys))))
            ) // 10**bad
            xd = xs[bad] if bad < len(xs) else 0
            yd = ys[bad] if bad < len(ys) else 0
            s = xd + yd + carry
            w.line(f"redo {xd}+{yd}+{carry}={s % 10},{s // 10}")
            digits[bad] = s % 10
            w.line(f"={_strip(digits)}")
            w.line(f"check {_strip(digits)}-{p.b}")
            _check_sub(w, digits, p.b, p.a)
        w.line("checked")
    elif p.op == "-":
        neg = p.a < p.b
        top, bot = (p.b, p.a) if neg else (p.a, p.b)
        w.line(f"{'neg' if neg else 'pos'} {top}-{bot}")
        slip = rng.randrange(len(str(top))) if slip_roll else None
        digits = _sub_columns(w, top, bot, slip, rng)
        w.line(f"={_strip(digits)}")
        w.line(f"check {_strip(digits)}+{bot}")
        bad = _check_add(w, digits, bot, top)
        if bad is not None:
            xs, ys = _digits(top), _digits(bot)
            low = sum(xs[j] * 10**j for j in range(bad)) - sum(
                ys[j] * 10**j for j in range(min(bad, len(ys)))
            )
            borrow = 1 if low < 0 else 0
            yd = ys[bad] if bad < len(ys) else 0
            s = xs[bad] - yd - borrow
            w.line(f"redo {xs[bad]}-{yd}-{borrow}={s % 10},{1 if s < 0 else 0}")
            digits[bad] = s % 10
            w.line(f"={_strip(digits)}")
            w.line(f"check {_strip(digits)}+{bot}")
            _check_add(w, digits, bot, top)
        w.line("checked")
        if neg:
            w.line(f"=-{_strip(digits)}")
    else:
        # Longer number on top; one partial product per digit of the bottom number.
        top, bot = (p.a, p.b) if len(str(p.a)) >= len(str(p.b)) else (p.b, p.a)
        if (top, bot) != (p.a, p.b):
            w.line(f"{top}*{bot}")
        partials: list[int] = []
        for j, bd in enumerate(_digits(bot)):
            carry, out = 0, []
            for td in _digits(top):
                s = td * bd + carry
                w.line(f"{td}*{bd}+{carry}={s % 10},{s // 10}")
                out.append(s % 10)
                carry = s // 10
            if carry:
                out.append(carry)
            value = _from_digits(out) * 10**j
            partials.append(value)
            w.line(f"p{j + 1}={value}")
        if len(partials) == 1:
            total = partials[0]
            w.line(f"={total}")
        else:
            # Two partials at most (bottom has up to 2 digits); the check is total - p1 == p2.
            slip = rng.randrange(len(str(partials[0] + partials[1]))) if slip_roll else None
            digits = _add_columns(w, partials[0], partials[1], slip, rng)
            w.line(f"={_strip(digits)}")
            w.line(f"check {_strip(digits)}-{partials[0]}")
            bad = _check_sub(w, digits, partials[0], partials[1])
            if bad is not None:
                correct = _digits(partials[0] + partials[1])
                x0, x1 = _digits(partials[0]), _digits(partials[1])
                low = sum(x0[j] * 10**j for j in range(min(bad, len(x0)))) + sum(
                    x1[j] * 10**j for j in range(min(bad, len(x1)))
                )
                carry = low // 10**bad
                xd = x0[bad] if bad < len(x0) else 0
                yd = x1[bad] if bad < len(x1) else 0
                s = xd + yd + carry
                assert s % 10 == correct[bad]
                w.line(f"redo {xd}+{yd}+{carry}={s % 10},{s // 10}")
                digits[bad] = s % 10
                w.line(f"={_strip(digits)}")
                w.line(f"check {_strip(digits)}-{partials[0]}")
                _check_sub(w, digits, partials[0], partials[1])
            w.line("checked")
    return Trace(thinking=w.text, answer=answer_text(p.result), masked_spans=w.masked)


def ood_trace() -> Trace:
    return Trace(thinking=OOD_THOUGHT + "\n", answer=OOD_REPLY)


def final_integer(text: str) -> int | None:
    """The last integer in a reply (with its minus sign), which is how answers are graded."""
    found = re.findall(r"-?\d+", text or "")
    return int(found[-1]) if found else None
