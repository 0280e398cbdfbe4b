"""Local agreement: commit the prefix on which two consecutive hypotheses agree.

The policy of whisper_streaming (Macháček et al. 2023, "Turning Whisper into Real-Time
Transcription System"): the audio buffer is re-transcribed after every chunk; a word is
final once the hypotheses of two consecutive updates agree on it and on every word before
it. This module is the pure bookkeeping (no model): words in, committed words out.

Each hypothesis covers the whole audio buffer, so it starts with words that were already
committed (the buffer keeps them until it is trimmed, as context for the model). Those
are found by aligning the hypothesis against the committed words still in the buffer
(text alignment, not timestamps: the word times here are interpolated within Whisper's
segments and too coarse to separate neighbouring words reliably).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

_NON_WORD = re.compile(r"[^\w']+")
SEARCH_SLACK = 3  # committed words may be re-heard with up to this many extra words before them


@dataclass(frozen=True)
class Word:
    """One word of a hypothesis: absolute times in seconds from the stream start."""

    start: float
    end: float
    text: str  # as the model wrote it, with punctuation

    @property
    def key(self) -> str:
        """Case- and punctuation-free form: what agreement compares."""
        return _NON_WORD.sub("", self.text.lower())


def words_text(words: Sequence[Word]) -> str:
    """The words joined with single spaces."""
    return " ".join(w.text for w in words)


def common_prefix(a: Sequence[Word], b: Sequence[Word]) -> int:
    """Number of leading words on which ``a`` and ``b`` agree (compared by ``Word.key``)."""
    n = 0
    for x, y in zip(a, b):
        if x.key != y.key:
            break
        n += 1
    return n


def skip_committed(hypothesis: Sequence[Word], committed: Sequence[Word]) -> int:
    """Index of the first word of ``hypothesis`` after the words that repeat ``committed``.

    ``committed``: the committed words the audio buffer still holds (oldest first). The
    hypothesis usually starts with them verbatim; when the model re-hears them slightly
    differently, the two are aligned (difflib, within ``len(committed) + SEARCH_SLACK``
    leading words) and the hypothesis word aligned with the last committed one marks the
    end. No aligned word at all: nothing is skipped.
    """
    if not committed:
        return 0
    n = common_prefix(hypothesis, committed)
    if n == len(committed):
        return n
    head = [w.key for w in hypothesis[: len(committed) + SEARCH_SLACK]]
    matcher = difflib.SequenceMatcher(a=[w.key for w in committed], b=head, autojunk=False)
    if not any(m.size for m in matcher.get_matching_blocks()):
        return 0
    end = len(committed)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if i1 < end <= i2:  # the edit that covers the last committed word
            if tag == "equal":
                return j1 + (end - i1)
            if tag == "replace":  # re-heard differently: as many words as were committed
                return j1 + min(end - i1, j2 - j1)
            return j1  # "delete": the last committed words were not heard again
    return 0


class HypothesisBuffer:
    """Committed and tentative words of a stream under local agreement.

    Call ``insert`` with each new hypothesis of the buffer, then ``flush`` to get the words
    that became final; ``forget_until`` when the audio buffer is trimmed.
    """

    def __init__(self) -> None:
        self.committed: list[Word] = []  # every committed word, oldest first
        self.in_buffer = 0  # how many of the last committed words the audio buffer still holds
        self.previous: list[Word] = []  # the last hypothesis' uncommitted words
        self.new: list[Word] = []  # the current hypothesis' uncommitted words

    def insert(self, hypothesis: Sequence[Word]) -> None:
        """Take a hypothesis of the whole buffer; the words repeating committed ones are dropped."""
        held = self.committed[len(self.committed) - self.in_buffer :]
        self.new = list(hypothesis[skip_committed(hypothesis, held) :])

    def flush(self) -> list[Word]:
        """Commit the words on which the current and previous hypotheses agree; return them."""
        n = common_prefix(self.new, self.previous)
        done = self.new[:n]
        self.commit(done)
        self.previous = self.new = self.new[n:]
        return done

    def commit(self, words: Sequence[Word]) -> None:
        """Make ``words`` final (agreement, or the end of the stream)."""
        self.committed += words
        self.in_buffer += len(words)

    def force(self) -> list[Word]:
        """Commit the current tentative words without agreement (end of stream, or a buffer
        that reached its cap); return them."""
        done = self.new
        self.commit(done)
        self.previous = self.new = []
        return done

    def forget_until(self, time: float) -> None:
        """The audio before ``time`` (s) left the buffer: committed words ending by then are
        no longer part of the hypotheses."""
        held = self.committed[len(self.committed) - self.in_buffer :]
        self.in_buffer = sum(1 for w in held if w.end > time + 1e-6)

    @property
    def tentative(self) -> list[Word]:
        """The latest hypothesis' words that are not committed yet."""
        return list(self.new)
