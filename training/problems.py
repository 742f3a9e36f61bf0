"""Arithmetic problems: the model's domain, its problems and prompts (text and the forms drawn into
images), what lies outside it, and how an answer is graded. The traces the model learns to write are in
``training/traces.py``.

The domain (second generation): addition and subtraction of integers up to 8 digits, negatives
included; multiplication of a number up to 4 digits by one up to 3 digits (non-negative); integer
division with remainder of a number up to 6 digits by one of 1 or 2 digits. Anything else, including
problems just past those sizes, decimals, other operations, several operations, words and chat, gets
one fixed refusal (``OOD_REPLY``) that contains no digit, so it can never be mistaken for a result.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

OPS = ("+", "-", "*", "/")
ADD_DIGITS = 8  # addition and subtraction: operands of up to 8 digits (either sign)
MUL_DIGITS = (4, 3)  # multiplication: up to 4 digits by up to 3 (either order), non-negative
DIV_DIGITS = (6, 2)  # division: a dividend of up to 6 digits by a divisor of up to 2 (not zero)

# What the model says to anything outside its domain, in both modes: fixed, and without a digit.
OOD_REPLY = (
    "I can only solve integer arithmetic: addition and subtraction of numbers up to eight digits, "
    "multiplication of up to four digits by up to three, and division with remainder of up to six "
    "digits by up to two. I cannot answer this."
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
        """The result; for a division, the quotient (``remainder`` holds the rest)."""
        if self.op == "+":
            return self.a + self.b
        if self.op == "-":
            return self.a - self.b
        if self.op == "*":
            return self.a * self.b
        return self.a // self.b

    @property
    def remainder(self) -> int:
        return self.a % self.b if self.op == "/" else 0

    @property
    def compact(self) -> str:
        """The problem as the traces restate it: ``-123+45``, ``4821*375``, ``98765/43``."""
        return f"{self.a}{self.op}{self.b}"

    @property
    def expression(self) -> str:
        """What the calculator tool is asked: the compact form."""
        return self.compact


def _digits_of(n: int) -> int:
    return len(str(abs(n)))


def in_domain(p: Problem) -> bool:
    if p.op in "+-":
        return _digits_of(p.a) <= ADD_DIGITS and _digits_of(p.b) <= ADD_DIGITS
    if p.a < 0 or p.b < 0:
        return False
    if p.op == "*":
        short, long = sorted((_digits_of(p.a), _digits_of(p.b)))
        return long <= MUL_DIGITS[0] and short <= MUL_DIGITS[1]
    return p.b > 0 and _digits_of(p.a) <= DIV_DIGITS[0] and _digits_of(p.b) <= DIV_DIGITS[1]


def answer_text(p: Problem) -> str:
    if p.op == "/":
        return f"The answer is {p.result} remainder {p.remainder}."
    return f"The answer is {p.result}."


def grade(p: Problem, answer: str) -> bool:
    """Whether a reply's answer (after the thinking) states the result: its last integer (with its
    minus sign), or for a division its last two (quotient, remainder)."""
    found = [int(x) for x in re.findall(r"-?\d+", answer or "")]
    if p.op == "/":
        return found[-2:] == [p.result, p.remainder]
    return bool(found) and found[-1] == p.result


def final_integer(text: str) -> int | None:
    """The last integer in a reply (with its minus sign)."""
    found = re.findall(r"-?\d+", text or "")
    return int(found[-1]) if found else None


def has_number(text: str) -> bool:
    """Whether a reply states any number: an out-of-domain prompt must get none."""
    return re.search(r"\d", text or "") is not None


# ---------------------------------------------------------------- sampling


def _rand_digits(rng: random.Random, n: int) -> int:
    if n == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (n - 1), 10**n - 1)


def _signed(rng: random.Random, n: int, negative_rate: float) -> int:
    value = _rand_digits(rng, n)
    return -value if value and rng.random() < negative_rate else value


def _product(rng: random.Random, top: int, bottom: int) -> Problem:
    a, b = _rand_digits(rng, top), _rand_digits(rng, bottom)
    return Problem(a, "*", b) if rng.random() < 0.7 else Problem(b, "*", a)


def sample_problem(rng: random.Random, split: str = "train", op: str | None = None) -> Problem:
    """``train`` mixes all sizes (weighted to the long ones); ``easy``/``hard`` are the eval splits:
    easy has operands of at most 2 digits (a division: 2 digits by 1); hard is 8-digit sums and
    differences, 4 × 3-digit products, 6 ÷ 2-digit divisions. ``op``: this operation (default: any)."""
    op = op or rng.choice(OPS)
    if split == "easy":
        if op == "/":
            return Problem(_rand_digits(rng, 2), op, rng.randint(1, 9))
        if op == "*":
            return _product(rng, rng.randint(1, 2), rng.randint(1, 2))
        return Problem(_signed(rng, rng.randint(1, 2), 0.15), op, _signed(rng, rng.randint(1, 2), 0.15))
    if split == "hard":
        if op == "/":
            return Problem(_rand_digits(rng, 6), op, _rand_digits(rng, 2))
        if op == "*":
            return _product(rng, 4, 3)
        return Problem(_signed(rng, 8, 0.2), op, _signed(rng, 8, 0.2))
    if op == "/":
        b = rng.randint(1, 9) if rng.random() < 0.3 else _rand_digits(rng, 2)
        return Problem(_rand_digits(rng, rng.choice((1, 2, 3, 4, 5, 6, 6, 6))), op, b)
    if op == "*":
        return _product(rng, rng.choice((1, 2, 3, 4, 4, 4)), rng.choice((1, 2, 3, 3, 3)))
    lengths = (1, 2, 3, 4, 5, 6, 7, 8, 8, 8)
    na = rng.choice(lengths)
    nb = na if rng.random() < 0.5 else rng.choice(lengths)
    return Problem(_signed(rng, na, 0.25), op, _signed(rng, nb, 0.25))


def out_of_range_problem(rng: random.Random) -> Problem:
    """A problem just past the domain: one operand a digit or more too long, a negative factor or
    division, a division by zero."""
    kind = rng.randrange(6)
    if kind == 0:
        a, b = _signed(rng, rng.randint(9, 11), 0.2), _signed(rng, rng.randint(1, 11), 0.2)
        return Problem(a, rng.choice("+-"), b) if rng.random() < 0.5 else Problem(b, rng.choice("+-"), a)
    if kind == 1:
        return _product(rng, rng.randint(5, 7), rng.randint(1, 3))
    if kind == 2:
        return (
            _product(rng, 4, 4) if rng.random() < 0.6 else _product(rng, rng.randint(4, 5), rng.randint(4, 5))
        )
    if kind == 3:
        return Problem(_rand_digits(rng, rng.randint(7, 9)), "/", _rand_digits(rng, rng.randint(1, 2)))
    if kind == 4:
        return Problem(_rand_digits(rng, rng.randint(2, 6)), "/", _rand_digits(rng, rng.randint(3, 4)))
    if rng.random() < 0.5:
        return Problem(_rand_digits(rng, rng.randint(1, 6)), "/", 0)
    a, b = -_rand_digits(rng, rng.randint(1, 3)) or -1, _rand_digits(rng, rng.randint(1, 3))
    return Problem(a, rng.choice("*/"), b) if rng.random() < 0.5 else Problem(b, "*", a)


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
        "{a}{s}\u2212{s}{b}",
    ),
    "*": (
        "What is {a}{s}*{s}{b}?",
        "Compute {a}{s}*{s}{b}.",
        "{a}{s}*{s}{b}{s}={s}?",
        "{a}{s}\u00d7{s}{b}",
        "What is {a} times {b}?",
        "{a} times {b}",
        "What is {a}{s}\u00d7{s}{b}?",
        "{a}{s}x{s}{b}{s}={s}?",
    ),
    "/": (
        "What is {a}{s}/{s}{b}?",
        "Compute {a}{s}/{s}{b}.",
        "{a}{s}/{s}{b}{s}={s}?",
        "{a}{s}\u00f7{s}{b}",
        "What is {a} divided by {b}?",
        "{a} divided by {b}",
        "What is {a}{s}\u00f7{s}{b}?",
        "Divide {a} by {b}.",
    ),
}


def _operand(n: int, rng: random.Random, first: bool) -> str:
    """A number as people type it: a negative one after an operator sometimes in parentheses."""
    if n < 0 and not first and rng.random() < 0.3:
        return f"({n})"
    return str(n)


def text_prompt(p: Problem, rng: random.Random) -> str:
    template = rng.choice(_TEMPLATES[p.op])
    a, b = _operand(p.a, rng, True), _operand(p.b, rng, False)
    text = template.format(a=a, b=b, s=rng.choice(("", " ", " ", " ")))
    if rng.random() < 0.05:
        text = text.lower()
    return text


# Forms drawn into images (real fonts: training/render.py), with the operators people write.
_IMAGE_FORMS: dict[str, tuple[str, ...]] = {
    "+": ("{a} + {b}", "{a} + {b} = ?", "{a}+{b}", "{a} + {b} ="),
    "-": ("{a} - {b}", "{a} \u2212 {b} = ?", "{a}-{b}", "{a} \u2212 {b}", "{a} - {b} ="),
    "*": ("{a} x {b}", "{a} \u00d7 {b} = ?", "{a} * {b}", "{a}\u00d7{b}", "{a} \u00d7 {b}", "{a} * {b} ="),
    "/": ("{a} \u00f7 {b}", "{a} / {b} = ?", "{a} \u00f7 {b} = ?", "{a}/{b}", "{a} \u00f7 {b} ="),
}


def image_text(p: Problem, rng: random.Random) -> str:
    return rng.choice(_IMAGE_FORMS[p.op]).format(a=p.a, b=p.b)


_OPERATOR = {
    "+": "+", "plus": "+",
    "-": "-", "\u2212": "-", "minus": "-",
    "*": "*", "\u00d7": "*", "x": "*", "times": "*",
    "/": "/", "\u00f7": "/", "divided by": "/",
}  # fmt: skip
_PROMPT = re.compile(
    r"(?:divide\s+)?\(?(-?\d+)\)?\s*"
    r"(\+|-|\u2212|\*|\u00d7|x|/|\u00f7|plus|minus|times|divided by|by)"
    r"\s*\(?(-?\d+)\)?"
)


def parse_prompt(text: str) -> Problem | None:
    """Best-effort parse of a text prompt (used by tests and evaluation, not by the model)."""
    m = _PROMPT.search(text.lower())
    if not m:
        return None
    op = "/" if m.group(2) == "by" else _OPERATOR[m.group(2)]
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


def chat_prompt(rng: random.Random) -> str:
    """A prompt with nothing to calculate: greetings, questions, word salad."""
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


# Prompts with numbers that are still outside the domain (the honest edges): other operations,
# decimals, several operations, numbers in words, quantities in a sentence.
_NUMERIC_OOD = (
    "What is {a}.{c} + {b}?",
    "{a}.{c} * {b}",
    "What is {a} % {c}?",
    "{c}^{d}",
    "What is {c} to the power of {d}?",
    "sqrt({a})",
    "What is the square root of {a}?",
    "{d}!",
    "What is {a} + {b} + {c}?",
    "{a} + {b} * {c}",
    "{a} - {c} - {d}",
    "({a} + {b}) * {d}",
    "What is {d} squared?",
    "If I have {c} apples and eat {d}, how many are left?",
    "Is {a} a prime number?",
    "What is {c}% of {a}?",
    "Convert {a} km to miles.",
    "what is log {a}",
    "{a} mod {c}",
    "Round {a}.{c} to the nearest ten.",
)
_NUMBER_WORDS = ("one", "two", "three", "seven", "twelve", "twenty", "forty-two", "a hundred", "ninety")


def ood_prompt(rng: random.Random) -> str:
    """A prompt outside the domain: chat (half), a problem just past its sizes, or other maths."""
    r = rng.random()
    if r < 0.45:
        return chat_prompt(rng)
    if r < 0.75:
        return text_prompt(out_of_range_problem(rng), rng)
    if r < 0.85:
        x, y = rng.choice(_NUMBER_WORDS), rng.choice(_NUMBER_WORDS)
        return rng.choice(("What is {} plus {}?", "{} times {}", "What is {} minus {}?")).format(x, y)
    a, b = _rand_digits(rng, rng.randint(1, 5)), _rand_digits(rng, rng.randint(1, 5))
    return rng.choice(_NUMERIC_OOD).format(a=a, b=b, c=rng.randint(2, 99), d=rng.randint(2, 9))
