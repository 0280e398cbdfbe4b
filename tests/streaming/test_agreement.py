"""Local agreement on hand-made hypothesis sequences."""

from __future__ import annotations

from flexispeech.streaming.agreement import HypothesisBuffer, Word, common_prefix, skip_committed, words_text


def hyp(text: str, start: float = 0.0, step: float = 0.5) -> list[Word]:
    """Words of ``text`` at ``step``-second intervals from ``start``."""
    return [Word(start + i * step, start + (i + 1) * step, t) for i, t in enumerate(text.split())]


def feed(buffer: HypothesisBuffer, text: str) -> str:
    buffer.insert(hyp(text))
    return words_text(buffer.flush())


def test_a_word_is_committed_when_two_consecutive_hypotheses_agree() -> None:
    b = HypothesisBuffer()
    assert feed(b, "the quick") == ""  # nothing to agree with yet
    assert words_text(b.tentative) == "the quick"
    assert feed(b, "the quick brown") == "the quick"
    assert words_text(b.tentative) == "brown"
    assert feed(b, "the quick brawn fox") == ""  # "brown" vs "brawn": no agreement
    assert feed(b, "the quick brawn fox jumps") == "brawn fox"
    assert words_text(b.committed) == "the quick brawn fox"
    assert words_text(b.tentative) == "jumps"


def test_agreement_ignores_case_and_punctuation_but_keeps_the_later_spelling() -> None:
    b = HypothesisBuffer()
    feed(b, "Hello world")
    assert feed(b, "hello, World. Again") == "hello, World."


def test_a_revised_committed_word_is_not_committed_twice() -> None:
    b = HypothesisBuffer()
    feed(b, "please call stella")
    assert feed(b, "please call stella and") == "please call stella"
    # the model now hears "Stellar" instead of "stella": the committed words are skipped anyway
    b.insert(hyp("please call Stellar and ask"))
    assert words_text(b.tentative) == "and ask"
    assert words_text(b.flush()) == "and"
    assert words_text(b.committed) == "please call stella and"


def test_skip_committed_aligns_when_extra_words_come_first() -> None:
    committed = hyp("meeting with doctor smith")
    assert skip_committed(hyp("the meeting with doctor smith starts"), committed) == 5
    assert skip_committed(hyp("starts at nine"), []) == 0
    assert skip_committed(hyp("something else entirely"), committed) == 0
    assert common_prefix(hyp("a b c"), hyp("a b d")) == 2


def test_trimming_the_buffer_forgets_committed_words_before_the_cut() -> None:
    b = HypothesisBuffer()
    feed(b, "one two three four")
    feed(b, "one two three four")
    assert b.in_buffer == 4
    b.forget_until(1.0)  # "one" [0, .5] and "two" [.5, 1] left the audio buffer
    assert b.in_buffer == 2
    # the next hypothesis covers only the remaining audio: it starts at "three"
    b.insert(hyp("three four five", start=1.0))
    assert words_text(b.tentative) == "five"


def test_force_commits_the_tentative_words() -> None:
    b = HypothesisBuffer()
    feed(b, "end of the")
    b.insert(hyp("end of the stream"))
    assert words_text(b.flush()) == "end of the"
    assert words_text(b.force()) == "stream"
    assert b.tentative == [] and words_text(b.committed) == "end of the stream"


def test_skip_committed_when_the_last_committed_word_is_not_heard_again() -> None:
    assert skip_committed(hyp("a b x y"), hyp("a b c")) == 3  # "c" re-heard as "x"
    assert skip_committed(hyp("a b"), hyp("a b c")) == 2  # "c" dropped
