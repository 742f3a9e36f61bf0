"""The calculator tool (app/profiles/calculator.py): its definition, pinned byte for byte, and its
evaluator on arithmetic, on what it must refuse, and on inputs as large as it accepts. The web UI's
port is held to the same answers in tests/ui/test_calculator.py."""

from __future__ import annotations

import json
import time

import pytest

from app.profiles.calculator import CALCULATOR_TOOL, MAX_DEPTH, MAX_LENGTH, answer_call, evaluate

# The definition the bundled model is trained on: every client must send exactly this JSON.
CANONICAL = (
    '{"type": "function", "function": {"name": "calculator", "description": "Evaluate an integer '
    'arithmetic expression: + - * and / (integer division with remainder).", "parameters": {"type": '
    '"object", "properties": {"expression": {"type": "string", "description": "For example 4821*375"}}, '
    '"required": ["expression"]}}}'
)
BIG = "123456789012345678901234567890"


def test_the_definition_is_the_one_the_model_is_trained_on() -> None:
    assert json.dumps(CALCULATOR_TOOL) == CANONICAL


@pytest.mark.parametrize(
    ("expression", "answer"),
    [
        ("4821*375", "1807875"),
        ("2+3*4", "14"),
        ("(2+3)*4", "20"),
        ("10-4-3", "3"),  # left to right
        (" 12 *\t( 3 - 5 )\n", "-24"),
        ("-5", "-5"),
        ("--5", "5"),
        ("2*-3", "-6"),
        ("-(2+3)*4", "-20"),
        ("007+1", "8"),
        ("0*-1", "0"),
        (f"{BIG}*{BIG}", str(int(BIG) ** 2)),  # exact, past 64 bits (and JavaScript's 53)
    ],
)
def test_integer_arithmetic(expression: str, answer: str) -> None:
    assert evaluate(expression) == answer


@pytest.mark.parametrize(
    ("expression", "answer"),
    [
        ("98765/43", "2296 remainder 37"),  # the whole expression is a division: with its remainder
        ("(98765/43)", "2296 remainder 37"),
        ("20/5", "4 remainder 0"),
        ("(100+5)/7", "15 remainder 0"),
        ("100/7/2", "7 remainder 0"),  # (100/7)/2: the last operation is a division
        ("-7/2", "-4 remainder 1"),  # rounded down, as Python's divmod
        ("7/-2", "-4 remainder -1"),
        ("10/3*3", "9"),  # inside an expression, only the quotient (rounded down) counts
        ("1+98765/43", "2297"),
        ("-(98765/43)", "-2296"),
    ],
)
def test_division_is_integer_division_with_the_remainder_of_the_last(expression: str, answer: str) -> None:
    assert evaluate(expression) == answer


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("1/0", "error: division by zero"),
        ("5+(3/(2-2))", "error: division by zero"),
        ("4821x375", 'error: unexpected "x"'),
        ("4821×375", 'error: unexpected "×"'),
        ("2**3", 'error: unexpected "*"'),
        ("+1", 'error: unexpected "+"'),
        ("1e3", 'error: unexpected "e"'),
        ("1_000", 'error: unexpected "_"'),  # Python's int() would take it
        ("٣+1", 'error: unexpected "٣"'),  # so would it this digit, and str.isdigit() "²"
        ("2.5*2", 'error: unexpected "."'),
        ("3 4", 'error: unexpected "4"'),
        ("(1+2))", 'error: unexpected ")"'),
        ("((1+2)", "error: unexpected end"),
        ("7*", "error: unexpected end"),
        ("", "error: empty expression"),
        (" \t\n", "error: empty expression"),
        ("print(1)", 'error: unexpected "p"'),
        ("__import__('os')", 'error: unexpected "_"'),
    ],
)
def test_what_it_cannot_evaluate_is_an_error_the_model_can_read(expression: str, error: str) -> None:
    assert evaluate(expression) == error


def test_input_size_and_nesting_are_bounded() -> None:
    widest = "9" * 100 + "*" + "9" * (MAX_LENGTH - 101)
    assert evaluate(widest) == str(int("9" * 100) * int("9" * (MAX_LENGTH - 101)))
    assert evaluate(widest + "9") == f"error: longer than {MAX_LENGTH} characters"
    started = time.monotonic()
    assert evaluate("9*" * 5_000_000 + "9") == f"error: longer than {MAX_LENGTH} characters"
    assert time.monotonic() - started < 0.5  # refused on its length, before any work
    deepest = "(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH
    assert evaluate(deepest) == "1"
    assert evaluate(f"({deepest})") == "error: too deeply nested"
    assert evaluate("-" * MAX_DEPTH + "1") == "1"
    assert evaluate("-" * (MAX_DEPTH + 1) + "1") == "error: too deeply nested"


@pytest.mark.parametrize(
    ("arguments", "answer"),
    [
        ('{"expression": "4821*375"}', "1807875"),
        ('{"expression": "98765/43", "note": "extra fields are ignored"}', "2296 remainder 37"),
        ('{"expression": 4821}', 'error: "expression" is not a string'),
        ("{}", 'error: "expression" is not a string'),
        ('["4821*375"]', "error: the arguments are not a JSON object"),
        ("4821*375", "error: the arguments are not a JSON object"),
        ("", "error: the arguments are not a JSON object"),
    ],
)
def test_a_call_is_answered_from_its_json_arguments(arguments: str, answer: str) -> None:
    assert answer_call(arguments) == answer
