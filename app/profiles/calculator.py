"""The calculator tool the bundled model calls mid-reasoning: its definition and its evaluator.

`CALCULATOR_TOOL` is the one definition every client offers, byte for byte (the model learns the
tool from its JSON in the prompt): training renders it into its traces, the eval and the tests send
it, and the web UI carries the same JSON in app/ui/js/calculator.js (tests/ui/test_calculator.py
holds the two equal). A client that offers it runs the calls itself: `answer_call` turns a call's
JSON arguments into the `tool` message's content. The UI runs a port of this module, with the same
grammar, answers and error strings (compared in the browser by the same test module).

The language: integers, `+ - * /`, parentheses and unary minus, spaces ignored, at most
`MAX_LENGTH` characters (which bounds the size of every result: nothing here multiplies digits
beyond the expression's own), at most `MAX_DEPTH` levels of nesting.

    expression := term (("+" | "-") term)*
    term       := factor (("*" | "/") factor)*
    factor     := "-" factor | number | "(" expression ")"

`/` divides integers, rounding down as Python's `//` does. When the whole expression is a division
(its last operation is a `/`), the answer also gives the remainder: `98765/43` is
"2296 remainder 37" (quotient and remainder as Python's `divmod`). Anything that cannot be
evaluated answers "error: …", which the model reads like any other result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CALCULATOR_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": (
            "Evaluate an integer arithmetic expression: + - * and / (integer division with remainder)."
        ),
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "For example 4821*375"}},
            "required": ["expression"],
        },
    },
}

MAX_LENGTH = 200
MAX_DEPTH = 32
DIGITS = "0123456789"
SPACES = " \t\r\n"
OPERATORS = "+-*/()"


class CalculatorError(Exception):
    """An expression the calculator cannot evaluate; the message says why, in the tool's words."""


@dataclass(frozen=True, slots=True)
class _Value:
    number: int
    remainder: int | None = None  # set when `number` is the quotient of the last operation, a `/`


def evaluate(expression: str) -> str:
    """The calculator's answer to `expression`: "1807875", "2296 remainder 37" or "error: …"."""
    try:
        value = _Parser(_tokens(expression)).parse()
    except CalculatorError as error:
        return f"error: {error}"
    if value.remainder is None:
        return str(value.number)
    return f"{value.number} remainder {value.remainder}"


def answer_call(arguments: str) -> str:
    """The `tool` message's content for one call, from the call's JSON arguments."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return "error: the arguments are not a JSON object"
    expression = parsed.get("expression")
    if not isinstance(expression, str):
        return 'error: "expression" is not a string'
    return evaluate(expression)


def _tokens(text: str) -> list[str]:
    """Numbers (runs of ASCII digits) and operators; anything else is an error."""
    if len(text) > MAX_LENGTH:
        raise CalculatorError(f"longer than {MAX_LENGTH} characters")
    tokens: list[str] = []
    at = 0
    while at < len(text):
        char = text[at]
        end = at + 1
        if char in DIGITS:
            while end < len(text) and text[end] in DIGITS:
                end += 1
            tokens.append(text[at:end])
        elif char in OPERATORS:
            tokens.append(char)
        elif char not in SPACES:
            raise CalculatorError(f'unexpected "{char}"')
        at = end
    if not tokens:
        raise CalculatorError("empty expression")
    return tokens


class _Parser:
    """Recursive descent over the tokens, evaluating as it goes."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.at = 0
        self.depth = 0

    def parse(self) -> _Value:
        value = self.expression()
        if self.at < len(self.tokens):
            raise CalculatorError(f'unexpected "{self.tokens[self.at]}"')
        return value

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise CalculatorError("unexpected end")
        self.at += 1
        return token

    def expression(self) -> _Value:
        value = self.term()
        while (operator := self.peek()) in ("+", "-"):
            self.at += 1
            right = self.term().number
            value = _Value(value.number + right if operator == "+" else value.number - right)
        return value

    def term(self) -> _Value:
        value = self.factor()
        while (operator := self.peek()) in ("*", "/"):
            self.at += 1
            right = self.factor().number
            if operator == "*":
                value = _Value(value.number * right)
            elif right == 0:
                raise CalculatorError("division by zero")
            else:
                value = _Value(*divmod(value.number, right))
        return value

    def factor(self) -> _Value:
        token = self.take()
        if token[0] in DIGITS:
            return _Value(int(token))
        if token not in ("-", "("):
            raise CalculatorError(f'unexpected "{token}"')
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise CalculatorError("too deeply nested")
        if token == "-":
            value = _Value(-self.factor().number)
        else:
            value = self.expression()
            if self.take() != ")":
                raise CalculatorError(f'unexpected "{self.tokens[self.at - 1]}"')
        self.depth -= 1
        return value
