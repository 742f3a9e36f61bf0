"""The synthetic data the bundled model is trained on: traces compute the right results, checks catch the
deliberate slips, prompts parse back to their problems."""

from __future__ import annotations

import random
import re

import pytest

from training import problems as pb

SPLITS = ("train", "easy", "hard")


def _results(thinking: str) -> list[int]:
    return [int(line[1:]) for line in thinking.splitlines() if re.fullmatch(r"=-?\d+", line)]


@pytest.mark.parametrize("seed", range(3))
def test_traces_end_with_the_true_result_and_a_passing_check(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(2000):
        p = pb.sample_problem(rng, rng.choice(SPLITS))
        trace = pb.long_trace(p, rng, slip_rate=0.0)
        assert _results(trace.thinking)[-1] == p.result, trace.thinking
        assert " bad" not in trace.thinking
        assert trace.thinking.rstrip().split("\n")[-1] in ("checked", f"={p.result}")
        assert pb.final_integer(trace.answer) == p.result


def test_a_slip_is_caught_by_the_check_redone_and_masked() -> None:
    rng = random.Random(5)
    caught = 0
    for _ in range(500):
        p = pb.Problem(rng.randint(10**5, 10**6 - 1), rng.choice("+-"), rng.randint(10**5, 10**6 - 1))
        trace = pb.long_trace(p, rng, slip_rate=1.0)
        results = _results(trace.thinking)
        assert results[-1] == p.result
        if " bad" in trace.thinking:
            caught += 1
            assert "\nredo " in trace.thinking
            assert trace.masked_spans and all(e - s == 1 for s, e in trace.masked_spans)
            start, end = trace.masked_spans[0]
            assert trace.thinking[start:end].isdigit()
            # the last check after the re-do passes
            assert " bad" not in trace.thinking.split("\ncheck ")[-1]
    assert caught == 500  # every slipped digit changes the result, so every slip must be caught


def test_multiplication_shows_partial_products() -> None:
    trace = pb.long_trace(pb.Problem(347, "*", 56), random.Random(0))
    assert "p1=2082" in trace.thinking and "p2=17350" in trace.thinking
    assert trace.answer == "The answer is 19432."


def test_negative_subtraction_result_has_a_minus_sign() -> None:
    trace = pb.long_trace(pb.Problem(396, "-", 4758), random.Random(0))
    assert trace.answer == "The answer is -4362."
    assert pb.final_integer(trace.answer) == -4362


def test_every_prompt_form_parses_back_to_its_problem() -> None:
    rng = random.Random(1)
    for _ in range(500):
        p = pb.sample_problem(rng)
        assert pb.parse_prompt(pb.text_prompt(p, rng)) == p
        assert pb.parse_prompt(pb.image_text(p, rng)) == p


def test_eval_splits_have_the_advertised_sizes() -> None:
    rng = random.Random(2)
    for _ in range(300):
        easy, hard = pb.sample_problem(rng, "easy"), pb.sample_problem(rng, "hard")
        assert easy.a < 100 and easy.b < 100
        if hard.op == "*":
            assert sorted((len(str(hard.a)), len(str(hard.b)))) == [2, 3]
        else:
            assert len(str(hard.a)) == len(str(hard.b)) == 6


_WORKING = re.compile(
    r"(\d+)\*(\d)=(\d+), (\d+)\*(\d)=(\d+), (\d+)\+(\d+)=(\d+), so (\d+)\.\nThe answer is (\d+)\."
)


@pytest.mark.parametrize("split", SPLITS)
def test_short_answers_are_direct_except_products_by_two_digits(split: str) -> None:
    rng = random.Random(4)
    worked = 0
    for _ in range(400):
        p = pb.sample_problem(rng, split)
        text = pb.short_answer(p)
        assert pb.final_integer(text) == p.result
        if p.op != "*" or min(len(str(p.a)), len(str(p.b))) < 2:
            assert text == pb.answer_text(p.result)
            continue
        worked += 1
        x, tens, by_tens, x2, units, by_units, a, b, head, joined, answer = map(
            int, _WORKING.fullmatch(text).groups()
        )
        assert {x, 10 * tens + units} == {p.a, p.b} and x2 == x
        assert by_tens == x * tens and by_units == x * units  # each step is right
        assert (a, b, head) == (by_tens, by_units // 10, by_tens + by_units // 10)
        assert joined == answer == p.result == 10 * head + by_units % 10
    assert worked > 20


def test_short_mode_is_trained_on_the_short_answer() -> None:
    from training import examples as E
    from training import tokenizer as tk

    ex = E.Example(pb.Problem(79, "*", 64), long=False, user_text="What is 79 * 64?")
    assert E.target_segments(ex, random.Random(0)) == [
        ("79*6=474, 79*4=316, 474+31=505, so 5056.\nThe answer is 5056." + tk.IM_END, 1.0)
    ]
