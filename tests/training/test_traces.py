"""The synthetic data the bundled model is trained on: the domain and its edges, traces that compute the
right results, checks that catch the deliberate slips, short solutions whose every step is right,
calculator calls the engine's parser reads, conversations, and prompts that parse back to their
problems."""

from __future__ import annotations

import itertools
import json
import random
import re

import pytest

from app.profiles.calculator import CALCULATOR_TOOL, evaluate
from training import examples as E
from training import problems as pb
from training import tokenizer as tk
from training import traces as tr

SPLITS = ("train", "easy", "hard")


def _results(thinking: str) -> list[int]:
    return [int(line[1:]) for line in thinking.splitlines() if re.fullmatch(r"=-?\d+", line)]


@pytest.mark.parametrize("seed", range(3))
def test_traces_end_with_the_true_result_and_a_passing_check(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(2000):
        p = pb.sample_problem(rng, rng.choice(SPLITS))
        assert pb.in_domain(p), p
        trace = tr.long_trace(p, rng, slip_rate=0.0)
        assert " bad" not in trace.thinking
        assert pb.grade(p, trace.answer)
        if p.op == "/":
            assert trace.thinking.splitlines()[-1] == f"={p.result} r{p.remainder}"
            continue
        assert _results(trace.thinking)[-1] == p.result, trace.thinking
        assert trace.thinking.rstrip().split("\n")[-1] in ("checked", f"={p.result}")


def test_a_slip_is_caught_by_the_check_redone_and_masked() -> None:
    rng = random.Random(5)
    caught = 0
    for _ in range(500):
        a, b = rng.randint(10**7, 10**8 - 1), rng.randint(10**7, 10**8 - 1)
        p = pb.Problem(a, rng.choice("+-"), b)
        trace = tr.long_trace(p, rng, slip_rate=1.0)
        assert _results(trace.thinking)[-1] == p.result
        if " bad" in trace.thinking:
            caught += 1
            assert "\nredo " in trace.thinking
            assert trace.masked_spans and all(e - s == 1 for s, e in trace.masked_spans)
            start, end = trace.masked_spans[0]
            assert trace.thinking[start:end].isdigit()
            assert " bad" not in trace.thinking.split("\ncheck ")[-1]  # the last check passes
    assert caught == 500  # every slipped digit changes the result, so every slip must be caught


def test_a_division_slip_takes_a_quotient_digit_one_off_shows_it_and_redoes_the_step() -> None:
    rng = random.Random(6)
    seen = {"over": 0, "big": 0}
    for _ in range(400):
        p = pb.sample_problem(rng, "hard", "/")
        trace = tr.long_trace(p, rng, slip_rate=1.0)
        lines = trace.thinking.splitlines()
        assert lines[-1] == f"={p.result} r{p.remainder}"
        if not any(q for _, q, _, _ in tr.division_steps(p)):
            continue
        ((start, end),) = trace.masked_spans  # the wrong quotient digit alone, out of the loss
        wrong = int(trace.thinking[start:end])
        i = trace.thinking[:start].count("\n")  # its line: `current|rest qW multiple`
        current = int(lines[i].split("|")[0])
        assert int(lines[i].split()[-1]) == wrong * p.b
        columns = list(itertools.takewhile(lambda s: "=" in s, lines[i + 1 :]))
        verdict = lines[i + 1 + len(columns)]
        if wrong * p.b > current:  # one too big: the subtraction's last column borrows, `over`
            assert columns[-1].endswith(",1") and verdict == "over"
            seen["over"] += 1
            right = wrong - 1
        else:  # one too small: the remainder is not below the divisor
            assert verdict == f"r{current - wrong * p.b} big" and current - wrong * p.b >= p.b
            seen["big"] += 1
            right = wrong + 1
        assert lines[i + 2 + len(columns)] == f"q{right} {right * p.b}"  # re-done from its digit
    assert seen["over"] > 100 and seen["big"] > 100


def test_a_product_shows_one_partial_product_per_digit_and_checks_the_last_sum() -> None:
    trace = tr.long_trace(pb.Problem(4821, "*", 375), random.Random(0))
    assert "p1=24105" in trace.thinking and "p2=337470" in trace.thinking and "p3=1446300" in trace.thinking
    assert "=361575\n" in trace.thinking  # p1 + p2, then + p3, checked
    assert "check 1807875-1446300" in trace.thinking
    assert trace.answer == "The answer is 1807875."


def test_a_division_writes_its_multiples_then_a_step_per_digit_with_the_subtraction_in_columns() -> None:
    trace = tr.long_trace(pb.Problem(98765, "/", 43), random.Random(0))
    lines = trace.thinking.splitlines()
    assert lines[:2] == ["98765/43", "t 43 86 129 172 215 258 301 344 387"]
    assert lines[-1] == "=2296 r37"
    assert trace.answer == "The answer is 2296 remainder 37."
    steps = [line for line in lines if "|" in line]
    assert len(steps) == 5  # one per dividend digit
    rest, rem, quotient = "98765", 0, ""
    for i, line in enumerate(lines):
        if "|" not in line:
            continue
        head, q_and_multiple = line.split(" q")
        current, left = head.split("|")
        # the digit brought down is the first of the line above's rest, the rest is what is left
        assert int(current) == rem * 10 + int(rest[0]) and left == rest[1:]
        q, *multiple = q_and_multiple.split()
        quotient += q
        rest, rem = left, int(current)
        if q == "0":
            assert not multiple
            continue
        assert int(multiple[0]) == 43 * int(q)
        columns = list(itertools.takewhile(lambda s: not s.startswith("r"), lines[i + 1 :]))
        assert len(columns) == len(current)  # the subtraction column by column, LSB first
        rem = int(current) - int(multiple[0])
        assert lines[i + 1 + len(columns)] == f"r{rem}" and 0 <= rem < 43
    assert int(quotient) == 2296 and rem == 37


@pytest.mark.parametrize(
    ("problem", "rewrite", "answer"),
    [
        (pb.Problem(-123, "+", 45), "=45-123", -78),
        (pb.Problem(5, "-", -7), "=5+7", 12),
        (pb.Problem(-5, "-", 7), "=-(5+7)", -12),
        (pb.Problem(-5, "+", -7), "=-(5+7)", -12),
        (pb.Problem(-9, "-", -4), "=4-9", -5),
    ],
)
def test_negative_operands_are_rewritten_over_non_negative_numbers(
    problem: pb.Problem, rewrite: str, answer: int
) -> None:
    trace = tr.long_trace(problem, random.Random(0))
    assert trace.thinking.splitlines()[1] == rewrite
    assert trace.answer == f"The answer is {answer}."
    assert _results(trace.thinking)[-1] == answer


def _short_columns(work: str) -> list[tuple[int, int]]:
    return [(int(d), int(k)) for d, k in re.findall(r"(\d),(\d)", work)]


@pytest.mark.parametrize("split", SPLITS)
def test_every_step_of_a_short_solution_is_right(split: str) -> None:
    rng = random.Random(4)
    for _ in range(1000):
        p = pb.sample_problem(rng, split)
        text = tr.short_solution(p)
        head, answer = text.split("\n")
        assert answer == pb.answer_text(p) and "<think>" not in text
        restated, work = head.split(": ", 1)
        assert restated.split(" ")[0] == p.compact
        if p.op == "/":
            steps = [tuple(map(int, s.split(","))) for s in work.split(" ")]
            assert steps == [(q, rem) for _, q, _, rem in tr.division_steps(p)]
            continue
        if p.op == "*":
            partials, _, work = work.partition(" | ")
            values = [int(v) for v in partials.split(" ")]
            assert sum(values) == p.result
        digits = [d for d, _ in _short_columns(work)]
        value = int("".join(map(str, reversed(digits)))) if digits else abs(p.result)
        assert value == abs(p.result), (p, text)


def test_short_solutions_are_a_fraction_of_the_long_traces() -> None:
    rng = random.Random(6)
    long = short = 0
    for _ in range(400):
        p = pb.sample_problem(rng, "hard")
        long += len(tr.long_trace(p, rng).thinking) + len(pb.answer_text(p))
        short += len(tr.short_solution(p))
    assert short / long < 0.3


def test_short_mode_is_trained_on_the_short_solution_with_the_restatement_weighted() -> None:
    ex = E.Example(pb.Problem(4758, "+", 396), long=False, user_text="What is 4758 + 396?")
    assert E.target_segments(ex, random.Random(0)) == [
        ("4758+396", E.RESTATE_WEIGHT),
        (": 4,1 5,1 1,1 5,0\nThe answer is 5154." + tk.IM_END, 1.0),
    ]


def test_the_domain_and_its_edges() -> None:
    inside = [
        pb.Problem(-99999999, "-", 99999999),
        pb.Problem(9999, "*", 999),
        pb.Problem(999, "*", 9999),
        pb.Problem(999999, "/", 99),
        pb.Problem(0, "/", 7),
    ]
    outside = [
        pb.Problem(100000000, "+", 1),
        pb.Problem(10000, "*", 9),
        pb.Problem(1000, "*", 1000),
        pb.Problem(1000000, "/", 7),
        pb.Problem(100, "/", 100),
        pb.Problem(5, "/", 0),
        pb.Problem(-5, "*", 3),
    ]
    assert all(pb.in_domain(p) for p in inside)
    assert not any(pb.in_domain(p) for p in outside)
    rng = random.Random(8)
    assert not any(pb.in_domain(pb.out_of_range_problem(rng)) for _ in range(2000))


def test_the_refusal_states_no_number() -> None:
    assert not pb.has_number(pb.OOD_REPLY)
    assert not pb.has_number(tr.ood_trace().answer)


def test_grading_reads_the_last_integer_or_quotient_and_remainder() -> None:
    assert pb.grade(pb.Problem(-5, "-", 7), "The answer is -12.")
    assert not pb.grade(pb.Problem(-5, "-", 7), "The answer is 12.")
    assert pb.grade(pb.Problem(98765, "/", 43), "The answer is 2296 remainder 37.")
    assert not pb.grade(pb.Problem(98765, "/", 43), "The answer is 2296.")
    assert not pb.grade(pb.Problem(1, "+", 1), pb.OOD_REPLY)


def test_every_prompt_form_parses_back_to_its_problem() -> None:
    rng = random.Random(1)
    for _ in range(1000):
        p = pb.sample_problem(rng)
        assert pb.parse_prompt(pb.text_prompt(p, rng)) == p
        assert pb.parse_prompt(pb.image_text(p, rng)) == p


def test_eval_splits_have_the_advertised_sizes() -> None:
    rng = random.Random(2)
    for _ in range(600):
        easy, hard = pb.sample_problem(rng, "easy"), pb.sample_problem(rng, "hard")
        assert abs(easy.a) < 100 and abs(easy.b) < 100
        sizes = (len(str(abs(hard.a))), len(str(abs(hard.b))))
        if hard.op == "*":
            assert sorted(sizes) == [3, 4]
        elif hard.op == "/":
            assert sizes == (6, 2)
        else:
            assert sizes == (8, 8)


def test_the_calculator_call_is_what_the_engine_parser_reads_and_the_tool_answers() -> None:
    """The call's JSON is what vLLM's `hermes` parser extracts; the result is what the calculator
    (app/profiles/calculator.py, the same code the UI ports) answers to it: the problem's result."""
    rng = random.Random(9)
    for _ in range(300):
        p = pb.sample_problem(rng, rng.choice(SPLITS))
        call = tr.tool_call_text(p)
        body = re.fullmatch(r"<tool_call>\n(.*)\n</tool_call>", call, re.S)
        assert body is not None
        parsed = json.loads(body.group(1))
        assert parsed["name"] == CALCULATOR_TOOL["function"]["name"]
        expected = f"{p.result} remainder {p.remainder}" if p.op == "/" else str(p.result)
        assert evaluate(parsed["arguments"]["expression"]) == tr.calculator_result(p) == expected
        assert tr.after_tool_trace(p).answer == pb.answer_text(p)


def test_long_mode_calls_the_calculator_only_when_it_is_offered() -> None:
    rng = random.Random(10)
    seen = {"call": 0, "after": 0, "": 0}
    for _ in range(600):
        ex = E.make_example(rng, tools_rate=1.0, ood_rate=0.0, image_rate=0.0)
        seen[ex.phase] += 1
        offered = E.offers_calculator(ex.tools)
        assert bool(ex.phase) == (ex.long and offered)
        if ex.phase == "after":
            prompt = E.prompt_text(ex)
            assert f"<tool_response>\n{tr.calculator_result(ex.problem)}\n</tool_response>" in prompt  # type: ignore[arg-type]
    assert min(seen.values()) > 50


def test_a_conversation_asks_its_last_question() -> None:
    rng = random.Random(11)
    for _ in range(200):
        ex = E.make_example(rng, conversation_rate=1.0, ood_rate=0.0, image_rate=0.0)
        assert 1 <= len(ex.history) <= 3
        prompt = E.prompt_text(ex)
        last_user = prompt.rsplit(f"{tk.IM_START}user\n", 1)[1]
        assert last_user.startswith(ex.user_text)
        for user, reply in ex.history:
            assert f"{user}{tk.IM_END}\n{tk.IM_START}assistant\n{reply}{tk.IM_END}" in prompt


def _hard_sized(p: pb.Problem) -> bool:
    """The hard split's sizes (problems.sample_problem): 8-digit ±, 4 × 3-digit ×, 6 ÷ 2-digit ÷."""
    sizes = sorted(len(str(abs(n))) for n in (p.a, p.b))
    return sizes == {"+": [8, 8], "-": [8, 8], "*": [3, 4], "/": [2, 6]}[p.op]


def _hard_share(hard_rate: float) -> float:
    rng = random.Random(12)
    drawn = [E.make_example(rng, ood_rate=0.0, image_rate=0.0, hard_rate=hard_rate) for _ in range(2000)]
    return sum(_hard_sized(ex.problem) for ex in drawn if ex.problem is not None) / len(drawn)


def test_a_hard_rate_draws_that_share_of_problems_from_the_hard_split() -> None:
    base = _hard_share(0.0)  # the train split's own hard-sized problems (its sizes are weighted to them)
    assert 0.1 < base < 0.4
    assert _hard_share(1.0) == 1.0
    assert abs(_hard_share(0.4) - (0.4 + 0.6 * base)) < 0.04


def test_a_division_rate_makes_that_share_of_problems_divisions_besides_the_uniform_draw() -> None:
    def share(division_rate: float) -> float:
        rng = random.Random(13)
        drawn = [E.make_example(rng, ood_rate=0.0, division_rate=division_rate) for _ in range(2000)]
        return sum(ex.problem is not None and ex.problem.op == "/" for ex in drawn) / len(drawn)

    assert abs(share(0.0) - 0.25) < 0.03
    assert share(1.0) == 1.0
    assert abs(share(0.3) - (0.3 + 0.7 * 0.25)) < 0.03
