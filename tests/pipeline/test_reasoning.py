"""The think-block splitter: tags cut anywhere, the vLLM newline conventions, stray and unclosed tags."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.pipeline.reasoning import ThinkSplitter, split_complete


def stream(chunks: list[str], *, in_reasoning: bool = False) -> tuple[str, str]:
    splitter = ThinkSplitter(in_reasoning=in_reasoning)
    reasoning: list[str] = []
    content: list[str] = []
    for chunk in chunks:
        r, c = splitter.feed(chunk)
        reasoning.append(r)
        content.append(c)
    r, c = splitter.flush()
    return "".join(reasoning) + r, "".join(content) + c


def char_by_char(text: str, *, in_reasoning: bool = False) -> tuple[str, str]:
    return stream(list(text), in_reasoning=in_reasoning)


def test_whole_block_in_one_chunk() -> None:
    assert stream(["<think>\nadd 2 and 3\n</think>\n\nThe answer is 5."]) == (
        "add 2 and 3",
        "The answer is 5.",
    )


def test_every_chunk_boundary_gives_the_same_split() -> None:
    text = "<think>\nstep 1\nstep 2\n</think>\n\n**5**"
    for cut in range(len(text) + 1):
        assert stream([text[:cut], text[cut:]]) == ("step 1\nstep 2", "**5**"), cut
    assert char_by_char(text) == ("step 1\nstep 2", "**5**")


def test_tag_prefix_is_held_back_not_more() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("<thi") == ("", "")
    assert splitter.feed("nk>\nfirst") == ("first", "")
    assert splitter.feed(" thought\n</th") == (" thought", "")
    assert splitter.feed("ink>\n\nanswer") == ("", "answer")
    assert splitter.flush() == ("", "")


def test_false_tag_prefix_is_released_as_reasoning() -> None:
    splitter = ThinkSplitter()
    splitter.feed("<think>a </th")
    assert splitter.feed("e end") == ("</the end", "")


def test_newline_before_possible_close_is_held_then_released() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("<think>\nline one\n") == ("line one", "")
    assert splitter.feed("line two") == ("\nline two", "")


def test_no_think_block_is_all_content_untouched() -> None:
    assert stream(["\n\nHello", " there"]) == ("", "\n\nHello there")
    assert split_complete("  Hi!\n") == (None, "  Hi!\n")


def test_leading_whitespace_before_think_is_allowed() -> None:
    assert split_complete(" \n <think>\nx\n</think>\n\ny") == ("x", "y")
    assert char_by_char(" \n <think>\nx\n</think>\n\ny") == ("x", "y")


def test_think_tag_later_in_the_answer_is_content() -> None:
    assert split_complete("Use <think> tags like <think>this</think>.") == (
        None,
        "Use <think> tags like <think>this</think>.",
    )
    assert split_complete("<think>r</think>then <think>x</think>") == ("r", "then <think>x</think>")


def test_stray_close_at_start_means_the_template_opened_an_empty_block() -> None:
    assert split_complete("</think>\n\n42") == ("", "42")
    assert char_by_char("\n</think>\n\n42") == ("", "42")


def test_in_reasoning_everything_before_close_is_reasoning() -> None:
    text = "Let me add.\n2+3=5\n</think>\n\n5"
    assert split_complete(text, in_reasoning=True) == ("Let me add.\n2+3=5", "5")
    assert char_by_char(text, in_reasoning=True) == ("Let me add.\n2+3=5", "5")


def test_in_reasoning_swallows_a_repeated_opening_tag() -> None:
    assert split_complete("<think>\nhm\n</think>\n\nok", in_reasoning=True) == ("hm", "ok")


def test_in_reasoning_without_any_close_is_all_reasoning() -> None:
    assert split_complete("still thinking", in_reasoning=True) == ("still thinking", "")
    assert split_complete("", in_reasoning=True) == ("", "")


def test_unclosed_block_is_all_reasoning_including_held_tail() -> None:
    assert split_complete("<think>\nhalf a thought\n</thi") == ("half a thought\n</thi", "")
    assert char_by_char("<think>\nabc\n") == ("abc\n", "")


def test_output_that_is_only_a_tag_prefix() -> None:
    assert split_complete("<thi") == (None, "<thi")
    assert split_complete("<thi", in_reasoning=True) == ("<thi", "")
    assert split_complete("   ") == (None, "   ")


def test_empty_block_qwen3_no_think_style() -> None:
    assert split_complete("<think>\n\n</think>\n\nHello") == ("", "Hello")
    assert split_complete("<think></think>Hello") == ("", "Hello")


def test_only_two_separator_newlines_are_dropped() -> None:
    assert split_complete("<think>r</think>\n\n\n- item") == ("r", "\n- item")
    assert char_by_char("<think>r</think>\n\n\n- item") == ("r", "\n- item")


def test_only_one_newline_is_stripped_on_each_side_of_the_reasoning() -> None:
    assert split_complete("<think>\n\nr\n\n</think>a") == ("\nr\n", "a")


def test_custom_tags() -> None:
    splitter = ThinkSplitter("<reasoning>", "</reasoning>")
    assert splitter.feed("<reasoning>\nplan\n</reason") == ("plan", "")
    assert splitter.feed("ing>\n\ndone") == ("", "done")


def test_empty_tags_are_refused() -> None:
    with pytest.raises(ValueError):
        ThinkSplitter("", "</think>")


def test_feed_holds_back_a_bounded_amount_on_a_long_stream() -> None:
    splitter = ThinkSplitter()
    splitter.feed("<think>\n")
    released = sum(len(splitter.feed("word ")[0]) for _ in range(10_000))
    assert released == 5 * 10_000


# Reasoning may not contain the closing tag; answers may contain anything.
tag_heavy = st.text(alphabet="<>/thinkabc \n", max_size=40)
reasoning_texts = tag_heavy.filter(lambda s: "</think>" not in s)


@st.composite
def chunked(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(reasoning=reasoning_texts, answer=tag_heavy, data=st.data())
def test_streamed_deltas_equal_the_split_of_the_whole(
    reasoning: str, answer: str, data: st.DataObject
) -> None:
    text = f"<think>\n{reasoning}\n</think>\n\n{answer}"
    chunks = data.draw(chunked(text))
    assert stream(chunks) == (reasoning, answer)
    assert split_complete(text) == (reasoning, answer)


@settings(max_examples=200, deadline=None)
@given(reasoning=reasoning_texts, answer=tag_heavy, data=st.data())
def test_streamed_deltas_equal_the_split_when_template_opened_the_block(
    reasoning: str, answer: str, data: st.DataObject
) -> None:
    text = f"\n{reasoning}\n</think>\n\n{answer}"
    assume(not reasoning.lstrip().startswith("<think>"))  # a leading tag is the tag itself, by design
    chunks = data.draw(chunked(text))
    assert stream(chunks, in_reasoning=True) == (reasoning, answer)


@settings(max_examples=200, deadline=None)
@given(answer=tag_heavy, data=st.data())
def test_streaming_matches_split_complete_on_arbitrary_text(answer: str, data: st.DataObject) -> None:
    chunks = data.draw(chunked(answer))
    expected_reasoning, expected_content = split_complete(answer)
    assert stream(chunks) == (expected_reasoning or "", expected_content)
