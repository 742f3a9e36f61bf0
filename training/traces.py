"""What the model learns to write: long-mode traces, short-mode solutions, the calculator's calls.

Long mode (design, and why): a tiny transformer learns column arithmetic far more easily when every step
is written out with the digits it uses, least significant column first, one column per line in a fixed
shape ``x+y+c=d,k`` (digit ``d``, carry ``k``). The problem is restated first (for images that is the
reading step, so the vision tower only has to transcribe); a problem with a negative operand is then
rewritten over non-negative numbers (``=-(123+45)``, ``=45-123``); the result is read back in normal
order, and a column-wise check (the inverse operation) marks each column ``ok`` or ``bad``. Some traces
contain a deliberate slip in one column: the check catches it, the column is re-done and the result
re-checked. The slipped digit is excluded from the loss (``Trace.masked_spans``) so the model learns to
catch slips without learning to make them. A product writes one partial product per digit of the
shorter factor and adds them up; a division writes the divisor's multiples table, then one step per
dividend digit: the current number with the digits still to bring down, the quotient digit, and its
multiple subtracted in columns (the second generation's first traces wrote ``current q multiple
remainder`` on one line: 14 % of hard divisions right, the errors in the one-line subtraction and in
the digit brought down).

Short mode: a short solution, the long trace's essential lines and nothing else: the restatement, the
rewrite over non-negative numbers, and the result's columns as ``digit,carry`` pairs (a product's partial
products first; a division's quotient digit and remainder per dividend digit), then the answer. A
fraction of the long trace's tokens (about a fifth on hard problems), no ``<think>`` content.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from app.profiles.calculator import evaluate
from training.problems import OOD_REPLY, OOD_THOUGHT, Problem, answer_text

CALCULATOR = "calculator"


@dataclass
class Trace:
    """Thinking text plus character spans (within ``thinking``) to leave out of the loss."""

    thinking: str
    answer: str
    masked_spans: list[tuple[int, int]] = field(default_factory=list)


def ood_trace() -> Trace:
    return Trace(thinking=OOD_THOUGHT + "\n", answer=OOD_REPLY)


# ---------------------------------------------------------------- digits


def _digits(n: int) -> list[int]:
    """Least significant digit first."""
    return [int(c) for c in reversed(str(n))]


def _from_digits(ds: list[int]) -> int:
    return int("".join(str(d) for d in reversed(ds))) if ds else 0


@dataclass(frozen=True)
class Signed:
    """A sum or difference rewritten over non-negative numbers: ``sign * (x op y)``, and for a
    difference ``x - y`` with ``x < y`` the subtraction is done as ``-(y - x)``."""

    x: int
    op: str  # "+" or "-"
    y: int
    negate: bool  # the whole is negated: -(x+y)

    @property
    def rewrite(self) -> str:
        inner = f"{self.x}{self.op}{self.y}"
        return f"=-({inner})" if self.negate else f"={inner}"


def signed_form(p: Problem) -> Signed | None:
    """The rewrite of a sum or difference with a negative operand (None: nothing to rewrite)."""
    a, b = p.a, p.b if p.op == "+" else -p.b
    if p.a >= 0 and p.b >= 0:
        return None
    if a < 0 and b < 0:
        return Signed(-a, "+", -b, True)
    if a >= 0 and b >= 0:
        return Signed(a, "+", b, False)
    return Signed(b, "-", -a, False) if a < 0 else Signed(a, "-", -b, False)


# ---------------------------------------------------------------- long traces


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


def _column(op: str, xd: int, yd: int, k: int) -> tuple[int, int]:
    """One column of ``x op y`` (``+`` or ``-``) with ``k`` carried or borrowed in: its digit, and the
    carry or borrow it passes on."""
    s = xd + yd + k if op == "+" else xd - yd - k
    return s % 10, (s // 10 if op == "+" else int(s < 0))


def _carried_into(op: str, x: int, y: int, i: int) -> int:
    """What column ``i`` of ``x op y`` gets from the columns below it."""
    low = x % 10**i + y % 10**i if op == "+" else x % 10**i - y % 10**i
    return low // 10**i if op == "+" else int(low < 0)


def _columns(w: _Writer, op: str, x: int, y: int, slip: int | None, rng: random.Random) -> list[int]:
    """Write ``x op y`` column by column, ``x op y op k=d,k'``; return the written digits (LSB first;
    the ``slip`` column's digit wrong, and left out of the loss). A difference ``x - y`` with x < y
    stops at its last column, whose borrow of 1 shows it went below zero."""
    xs, ys = _digits(x), _digits(y)
    n = max(len(xs), len(ys))
    k, out = 0, []
    for i in range(n + 1):
        if i == n and (k == 0 or op == "-"):
            break
        xd = xs[i] if i < len(xs) else 0
        yd = ys[i] if i < len(ys) else 0
        d, passed = _column(op, xd, yd, k)
        head = f"{xd}{op}{yd}{op}{k}="
        if slip == i:
            d = (d + rng.randint(1, 9)) % 10
            w.raw(head)
            w.raw(str(d), masked=True)
            w.raw(f",{passed}\n")
        else:
            w.line(f"{head}{d},{passed}")
        out.append(d)
        k = passed
    return out


def _check(w: _Writer, op: str, c_digits: list[int], y: int, expect: int) -> int | None:
    """Check ``c op y == expect`` column by column, each marked ``ok`` or ``bad``; return the first bad
    column or None."""
    ys, es = _digits(y), _digits(expect)
    k = 0
    for i in range(max(len(c_digits), len(es))):
        cd = c_digits[i] if i < len(c_digits) else 0
        yd = ys[i] if i < len(ys) else 0
        d, passed = _column(op, cd, yd, k)
        ok = d == (es[i] if i < len(es) else 0)
        w.line(f"{cd}{op}{yd}{op}{k}={d},{passed} {'ok' if ok else 'bad'}")
        if not ok:
            return i
        k = passed
    return None


def _checked(w: _Writer, op: str, x: int, y: int, slip_roll: bool, rng: random.Random) -> None:
    """``x op y`` (for ``-``, x >= y) in columns, read back, checked by the inverse operation
    (``result-y`` for a sum, ``result+y`` for a difference); a slip is caught and re-done."""
    slip = rng.randrange(len(str(max(x, y)))) if slip_roll else None
    digits = _columns(w, op, x, y, slip, rng)
    inverse = "-" if op == "+" else "+"
    w.line(f"={_from_digits(digits)}")
    w.line(f"check {_from_digits(digits)}{inverse}{y}")
    bad = _check(w, inverse, digits, y, x)
    if bad is not None:
        xd, yd, k = x // 10**bad % 10, y // 10**bad % 10, _carried_into(op, x, y, bad)
        digits[bad], passed = _column(op, xd, yd, k)
        w.line(f"redo {xd}{op}{yd}{op}{k}={digits[bad]},{passed}")
        w.line(f"={_from_digits(digits)}")
        w.line(f"check {_from_digits(digits)}{inverse}{y}")
        _check(w, inverse, digits, y, x)
    w.line("checked")


def _checked_difference(w: _Writer, x: int, y: int, slip_roll: bool, rng: random.Random) -> None:
    """``x-y`` (either order): bigger minus smaller, checked, and negated when ``x < y``."""
    neg = x < y
    top, bot = (y, x) if neg else (x, y)
    w.line(f"{'neg' if neg else 'pos'} {top}-{bot}")
    _checked(w, "-", top, bot, slip_roll, rng)
    if neg:
        w.line(f"=-{top - bot}")


def _factors(p: Problem) -> tuple[int, int]:
    """(top, bottom): the longer factor on top, one partial product per digit of the bottom one."""
    return (p.a, p.b) if len(str(p.a)) >= len(str(p.b)) else (p.b, p.a)


def _partials(w: _Writer, top: int, bot: int) -> list[int]:
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
    return partials


def _long_product(w: _Writer, p: Problem, slip_roll: bool, rng: random.Random) -> None:
    top, bot = _factors(p)
    if (top, bot) != (p.a, p.b):
        w.line(f"{top}*{bot}")
    partials = _partials(w, top, bot)
    total = partials[0]
    for k, partial in enumerate(partials[1:], start=2):
        last = k == len(partials)
        if last:  # the last addition is checked (and may slip); the earlier ones are read back
            _checked(w, "+", total, partial, slip_roll, rng)
        else:
            digits = _columns(w, "+", total, partial, None, rng)
            w.line(f"={_from_digits(digits)}")
        total += partial
    if len(partials) == 1:
        w.line(f"={total}")


def multiples(divisor: int) -> list[int]:
    return [divisor * k for k in range(1, 10)]


def division_steps(p: Problem) -> list[tuple[int, int, int, int]]:
    """Long division, one step per dividend digit: (current, quotient digit, multiple, remainder)."""
    steps, rem = [], 0
    for digit in str(p.a):
        current = rem * 10 + int(digit)
        q = current // p.b
        rem = current - q * p.b
        steps.append((current, q, q * p.b, rem))
    return steps


def _long_division(w: _Writer, p: Problem, slip_roll: bool, rng: random.Random) -> None:
    """The multiples table, then one step per dividend digit: ``current|rest qQ`` (the digits still to
    bring down after ``|``, so the next one is read off the line above, not counted out of the
    dividend), and when the quotient digit is not 0 its multiple and the subtraction in columns, read
    back as ``rR``. With a slip, one step first takes a quotient digit one off (see `_wrong_quotient`)."""
    w.line("t " + " ".join(str(m) for m in multiples(p.b)))
    dividend, steps = str(p.a), division_steps(p)
    nonzero = [i for i, (_, q, _, _) in enumerate(steps) if q]
    slipped = rng.choice(nonzero) if slip_roll and nonzero else None
    for i, (current, q, multiple, rem) in enumerate(steps):
        head = f"{current}|{dividend[i + 1 :]} "
        if q == 0:
            w.line(f"{head}q0")
            continue
        if i == slipped:
            _wrong_quotient(w, head, current, q, p.b, rng)
            head = ""
        w.line(f"{head}q{q} {multiple}")
        _columns(w, "-", current, multiple, None, rng)
        w.line(f"r{rem}")
    w.line(f"={p.result} r{p.remainder}")


def _wrong_quotient(w: _Writer, head: str, current: int, q: int, divisor: int, rng: random.Random) -> None:
    """A quotient digit one off (left out of the loss), and how the step shows it: one too big, the
    subtraction borrows out of its last column (``over``); one too small, the remainder is not below
    the divisor (``rR big``). The step is then re-done from its quotient digit."""
    wrong = q + 1 if q == 1 or (q < 9 and rng.random() < 0.5) else q - 1
    w.raw(head + "q")
    w.raw(str(wrong), masked=True)
    w.line(f" {wrong * divisor}")
    _columns(w, "-", current, wrong * divisor, None, rng)
    w.line("over" if wrong > q else f"r{current - wrong * divisor} big")


def long_trace(p: Problem, rng: random.Random, slip_rate: float = 0.0) -> Trace:
    w = _Writer()
    w.line(p.compact)
    # A division has a quotient digit to choose per dividend digit: three times the slips.
    slip_roll = rng.random() < slip_rate * (3 if p.op == "/" else 1)
    if p.op in "+-":
        form = signed_form(p)
        x, op, y = (form.x, form.op, form.y) if form else (p.a, p.op, p.b)
        if form:
            w.line(form.rewrite)
        if op == "+":
            _checked(w, "+", x, y, slip_roll, rng)
        else:
            _checked_difference(w, x, y, slip_roll, rng)
        if form and form.negate and p.result:
            w.line(f"={p.result}")
    elif p.op == "*":
        _long_product(w, p, slip_roll, rng)
    else:
        _long_division(w, p, slip_roll, rng)
    return Trace(thinking=w.text, answer=answer_text(p), masked_spans=w.masked)


# ---------------------------------------------------------------- short solutions


def _column_pairs(columns: list[list[int]]) -> str:
    """``digit,carry`` for the sum of each column (LSB first), the last carry in a column of its own."""
    pairs, carry = [], 0
    for column in columns:
        s = sum(column) + carry
        pairs.append(f"{s % 10},{s // 10}")
        carry = s // 10
    while carry:
        pairs.append(f"{carry % 10},{carry // 10}")
        carry //= 10
    return " ".join(pairs)


def _sum_columns(*terms: int) -> str:
    width = max(len(str(t)) for t in terms)
    return _column_pairs([[t // 10**i % 10 for t in terms] for i in range(width)])


def _difference_columns(top: int, bot: int) -> str:
    pairs, borrow = [], 0
    for i in range(len(str(top))):
        s = top // 10**i % 10 - bot // 10**i % 10 - borrow
        borrow = 1 if s < 0 else 0
        pairs.append(f"{s % 10},{borrow}")
    return " ".join(pairs)


def short_solution(p: Problem) -> str:
    """Short mode's reply: the working on one line, then the answer (see the module docstring)."""
    head = p.compact
    if p.op in "+-":
        form = signed_form(p)
        x, op, y = (form.x, form.op, form.y) if form else (p.a, p.op, p.b)
        if form:
            head += " " + form.rewrite
        if op == "+":
            work = _sum_columns(x, y)
        else:
            work = ("neg " if x < y else "") + _difference_columns(max(x, y), min(x, y))
    elif p.op == "*":
        top, bot = _factors(p)
        partials = [top * d * 10**j for j, d in enumerate(_digits(bot))]
        work = " ".join(str(v) for v in partials)
        if len(partials) > 1:
            work += " | " + _sum_columns(*partials)
    else:
        work = " ".join(f"{q},{rem}" for _, q, _, rem in division_steps(p))
    return f"{head}: {work}\n{answer_text(p)}"


# ---------------------------------------------------------------- the calculator tool


def calculator_result(p: Problem) -> str:
    """What the calculator tool answers to the call (app/profiles/calculator.py: the evaluator every
    client runs, the web UI's port included)."""
    return evaluate(p.expression)


def tool_call_text(p: Problem) -> str:
    """A Hermes/Qwen3 tool call, as the engine's `hermes` parser reads it."""
    arguments = '{"expression": "' + p.expression + '"}'
    return '<tool_call>\n{"name": "' + CALCULATOR + '", "arguments": ' + arguments + "}\n</tool_call>"


def calling_trace(p: Problem) -> Trace:
    """Long mode with the calculator offered, first turn: restate, decide, call (the call is the
    answer part: the engine's reasoning parser ends the thinking at ``</think>``)."""
    return Trace(thinking=f"{p.compact}\nuse {CALCULATOR}\n", answer=tool_call_text(p))


def after_tool_trace(p: Problem) -> Trace:
    """Long mode after the calculator's result: read it, answer."""
    return Trace(thinking=f"{CALCULATOR} {calculator_result(p)}\n", answer=answer_text(p))
