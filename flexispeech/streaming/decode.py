"""Batched greedy Whisper decoding with segment timestamps: one row per stream, each row
with its own decoder prompt, token cap and (through ``use_ranks``) adapter rank.

transformers' ``generate`` takes one ``prompt_ids`` for the whole batch, so the streams of
a server could not share a decoding call through it: each stream's prompt is the committed
text that left its own buffer. This loop left-pads the rows' prefixes
(``<|startofprev|> prompt <|startoftranscript|> ...``) to one length, masks the padding
out of self-attention and gives every row its own positions (row ``i`` starts at 0 after
its padding), so each row decodes as it would alone. The logits go through the processors
that ``generate`` uses for timestamped short-form decoding (``Suppression``, the first
generated token being the same step for every row because the prefixes are aligned at
their end, and ``TimestampRules``, the timestamp processor's rules for all rows at once).

Steps are saved without changing a token: the first step takes each row's draft (its
previous decoding), and every later step a proposal looked up in the row's own prompt and
tokens (``lookup_proposal``); a step checks what it is fed against the greedy choices.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import WhisperForConditionalGeneration

# transformers renamed forward's ``past_key_values`` to ``cache`` (5.2x; the old name warns
# until 5.40): pass the name this version declares.
_CACHE_KWARG = (
    "cache"
    if "cache" in inspect.signature(WhisperForConditionalGeneration.forward).parameters
    else ("past_key_values")
)


def init_tokens(model: nn.Module) -> list[int]:
    """The tokens after the prompt: ``<|startoftranscript|>`` (+ ``<|en|><|transcribe|>`` on a
    multilingual model); with timestamps there is no ``<|notimestamps|>``."""
    gc = model.generation_config
    tokens = [int(gc.decoder_start_token_id)]
    if getattr(gc, "is_multilingual", False):
        tokens += [int(gc.lang_to_id["<|en|>"]), int(gc.task_to_id["transcribe"])]
    return tokens


def prompt_tokens(tokenizer: Any, prompt: str) -> list[int]:
    """``<|startofprev|>`` and the prompt's tokens, as ``get_prompt_ids`` makes them; [] for no prompt."""
    if not prompt:
        return []
    return [int(i) for i in tokenizer.get_prompt_ids(prompt, return_tensors="np").tolist()]


class Suppression:
    """The token suppression that ``WhisperGenerationMixin._retrieve_logit_processors`` puts
    before the timestamp rules: ``begin_suppress_tokens`` at the first generated token,
    ``suppress_tokens`` at every token, as transformers' ``SuppressTokensAtBegin`` and
    ``SuppressTokens`` processors give it. Their masks are built once per decoding: the
    processors build theirs with ``torch.isin`` over the vocabulary at every step, about
    2 ms of a 6-ms step of whisper-tiny on a CPU, for a mask that never changes."""

    def __init__(self, model: nn.Module, vocab: int, device: torch.device) -> None:
        gc = model.generation_config
        ids = torch.arange(vocab, device=device)

        def mask(tokens: Sequence[int] | None) -> torch.Tensor | None:
            if tokens is None:
                return None
            return torch.isin(ids, torch.tensor(list(tokens), dtype=torch.long, device=device))

        self.begin = mask(gc.begin_suppress_tokens)  # [V] bool, or None
        self.always = mask(gc.suppress_tokens)  # [V] bool, or None

    def __call__(self, scores: torch.Tensor, first: Sequence[bool]) -> torch.Tensor:
        """``scores`` [B, V] of the next token; ``first[i]``: row ``i``'s is the first
        generated one."""
        if any(first) and self.begin is not None:
            rows = torch.tensor(list(first), device=scores.device)[:, None]
            scores = scores.masked_fill(rows & self.begin, -float("inf"))
        if self.always is not None:
            scores = scores.masked_fill(self.always, -float("inf"))
        return scores


class TimestampRules:
    """transformers' ``WhisperTimeStampLogitsProcessor`` for a whole batch at once.

    The same rules (timestamps in pairs, times that never go back, the first token a
    timestamp no later than ``max_initial_timestamp_index``, a timestamp when all of them
    together are likelier than any text token), with each row's state kept on the host
    from the tokens it generated: the processor reads every row's sequence back from the
    device and masks row by row, which on a GPU costs a launch (or a sync, in older
    versions) per row and step, i.e. time that grows with the number of streams.
    """

    def __init__(self, model: nn.Module, vocab: int, device: torch.device) -> None:
        gc = model.generation_config
        self.no_timestamps = int(gc.no_timestamps_token_id)
        self.begin = self.no_timestamps + 1  # the first timestamp token, <|0.00|>
        self.eos = int(gc.eos_token_id)
        self.max_initial = getattr(gc, "max_initial_timestamp_index", None)
        self.detect_from_logprob = getattr(gc, "_detect_timestamp_from_logprob", True)
        self.vocab_ids = torch.arange(vocab, device=device)  # [V]

    def __call__(self, scores: torch.Tensor, generated: Sequence[Sequence[int]]) -> torch.Tensor:
        """``scores`` [B, V] of the next token after each row's ``generated`` tokens."""
        scores = scores.clone()
        scores[:, self.no_timestamps] = -float("inf")
        no_stamps, no_text, floor = [], [], []  # per row: forbid timestamps / text; lowest timestamp allowed
        for seq in generated:
            last = len(seq) >= 1 and seq[-1] >= self.begin
            penultimate = len(seq) < 2 or seq[-2] >= self.begin
            no_stamps.append(last and penultimate)
            no_text.append(last and not penultimate)
            latest = next((t for t in reversed(seq) if t >= self.begin), None)
            if latest is None:  # no timestamp is forbidden until one is sampled
                floor.append(self.begin)
            else:  # times never go back; a pair's second half may repeat its first, else no <|0.00|> twice
                floor.append(latest if last and not penultimate else latest + 1)
        device = scores.device
        ids = self.vocab_ids[None, :]
        no_stamps_t = torch.tensor(no_stamps, device=device)[:, None]
        no_text_t = torch.tensor(no_text, device=device)[:, None]
        floor_t = torch.tensor(floor, device=device)[:, None]
        is_stamp = ids >= self.begin
        mask = (no_stamps_t & is_stamp) | (no_text_t & (ids < self.eos)) | (is_stamp & (ids < floor_t))
        scores.masked_fill_(mask, -float("inf"))
        first = [len(seq) == 0 for seq in generated]
        if any(first):  # a row's first token: a timestamp, and an early one
            rows = torch.tensor(first, device=device)
            scores[rows, : self.begin] = -float("inf")
            if self.max_initial is not None:
                scores[rows, self.begin + self.max_initial + 1 :] = -float("inf")
        if self.detect_from_logprob:
            logprobs = torch.nn.functional.log_softmax(scores.float(), dim=-1)
            stamp_logprob = logprobs[:, self.begin :].logsumexp(dim=-1)
            text_logprob = logprobs[:, : self.begin].max(dim=-1).values
            scores[:, : self.begin].masked_fill_((stamp_logprob > text_logprob)[:, None], -float("inf"))
        return scores


def complete_segments(tokens: Sequence[int], timestamp_begin: int, eos: int) -> list[int]:
    """``tokens`` as ``generate`` returns them for short-form decoding with timestamps: without
    ``<|endoftext|>``, and cut after the last pair of consecutive timestamps (the end of the
    last complete segment) unless the sequence ends with a single timestamp; a sequence
    without such a pair is kept whole (transformers' ``_retrieve_segment``)."""
    seq = [t for t in tokens if t != eos]
    stamp = [t >= timestamp_begin for t in seq]
    if stamp[-2:] == [False, True]:
        return seq
    pairs = [i for i in range(1, len(seq)) if stamp[i - 1] and stamp[i]]
    return seq[: pairs[-1] + 1] if pairs else seq


LOOP_MAX_N = 48  # the longest repeated n-gram looked for (a sentence or two of tokens)
LONG_N = 8  # n-grams at least this long are a loop when they come twice in a row; shorter ones, three times


def loop_start(tokens: Sequence[int], timestamp_begin: int) -> int | None:
    """Where to cut ``tokens`` if their text (timestamps left aside) ends with a loop: an
    n-gram (n <= ``LOOP_MAX_N``) repeated back to back, three times if shorter than
    ``LONG_N``, twice if longer (a short one may repeat in real speech: "no, no, no").
    Returns the index just after the loop's first copy (one copy stays), None for no loop."""
    text = [i for i, t in enumerate(tokens) if t < timestamp_begin]
    values = [tokens[i] for i in text]
    last = len(values) - 1
    for n in range(1, min(LOOP_MAX_N, len(values) // 2) + 1):
        if values[last] != values[last - n]:  # cheap filter: the loop's last token repeats n back
            continue
        copies = 3 if n < LONG_N else 2
        if len(values) < copies * n:
            continue
        tail = values[-n:]
        if all(values[len(values) - (k + 1) * n : len(values) - k * n] == tail for k in range(1, copies)):
            return text[len(values) - (copies - 1) * n]
    return None


LOOKUP_N = 3  # a proposal needs the row's last LOOKUP_N tokens to have come before
LOOKUP_MAX = 32  # tokens proposed at most per step


def lookup_proposal(history: Sequence[int], n: int = LOOKUP_N, most: int = LOOKUP_MAX) -> list[int]:
    """The tokens that followed the latest earlier occurrence of ``history``'s last ``n``
    tokens (at most ``most``), [] if they did not occur before: prompt lookup.

    Whisper repeats text it has seen (the prompt, its own earlier sentences), and a row
    looping back to its start (as a stream's buffer does when the prompt holds the
    sentence ahead) generates a whole copy of its text before ``loop_start`` can cut it:
    one step per token of the copy, while every other row of the batch waits. Proposed
    tokens are checked against the greedy choices (``verify_drafts``), so they change no
    token; a wrong proposal costs its tokens' pass through the decoder."""
    if len(history) <= n:
        return []
    tail = list(history[-n:])
    for start in range(len(history) - n - 1, -1, -1):  # the latest occurrence: most like what comes next
        # The first token before the slice: this runs for every row at every step (host work
        # that a GPU step waits for), and most positions differ there.
        if history[start] == tail[0] and list(history[start : start + n]) == tail:
            return list(history[start + n : start + n + most])
    return []


def greedy_decode(
    model: nn.Module,
    features: torch.Tensor,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
    stop_loops: bool = False,
    drafts: Sequence[Sequence[int]] | None = None,
) -> list[list[int]]:
    """Greedy tokens of every row with timestamps, token for token what ``generate`` returns
    for the row alone (``complete_segments``).

    Args:
        model: a ``WhisperForConditionalGeneration`` whose encoder window matches
            ``features``; run it inside ``use_ranks(model, ranks)`` for per-row ranks.
        features: log-mel features [B, n_mels, 2 * encoder positions].
        prompts: per row, ``prompt_tokens`` (may be empty).
        max_new_tokens: per row, the most tokens to generate.
        stop_loops: end a row that repeats itself (``loop_start``) and drop the repeats.
            A batch decodes until its longest row ends, so one stream stuck in a loop
            would hold every stream of its batch to its token cap.
        drafts: per row, tokens the row is likely to begin with (a stream's previous
            decoding of the same buffer start: its committed text and most of the rest come
            back every update). The first step feeds them after the prefix and keeps those
            the greedy choice agrees with, in order, so a draft saves a step per agreed token
            and changes no token (``verify_drafts``).

    Returns B lists of generated token ids (the prefix not included).
    """
    device = next(model.parameters()).device
    batch = features.shape[0]
    eos = int(model.generation_config.eos_token_id)
    init = init_tokens(model)
    prefixes = [list(p) + init for p in prompts]
    width = max(len(p) for p in prefixes)
    # The decoder's positions end at max_target_positions: the longest prefix bounds every cap.
    room = int(model.config.max_target_positions) - max(len(p) for p in prefixes)
    caps = [max(0, min(int(n), room)) for n in max_new_tokens]
    # A draft token is generated only where the cap allows it, and never <|endoftext|>.
    drafts = [
        [int(t) for t in d if t != eos][: max(0, cap - 1)] for d, cap in zip(drafts or [[]] * batch, caps)
    ]
    depth = max((len(d) for d in drafts), default=0)
    # Left padding: every prefix ends at column ``width``, where generation begins for all
    # rows; each row's draft follows it, right-padded to ``depth``.
    ids = torch.full((batch, width + depth), eos, dtype=torch.long)
    mask = torch.zeros((batch, width + depth), dtype=torch.long)
    for row, (prefix, draft) in enumerate(zip(prefixes, drafts)):
        ids[row, width - len(prefix) : width + len(draft)] = torch.tensor(prefix + draft, dtype=torch.long)
        mask[row, width - len(prefix) : width + len(draft)] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, width + depth]: 0 at each row's first real token
    timestamp_begin = int(model.generation_config.no_timestamps_token_id) + 1
    suppress = Suppression(model, int(model.config.vocab_size), device)
    rules = TimestampRules(model, int(model.config.vocab_size), device)
    done = [cap == 0 for cap in caps]
    generated: list[list[int]] = [[] for _ in range(batch)]

    def take(row: int, token: int) -> None:
        """Append a row's next token; the row is done at <|endoftext|>, its cap or a loop."""
        seq = generated[row]
        seq.append(token)
        if token == eos or len(seq) >= caps[row]:
            done[row] = True
        cut = loop_start(seq, timestamp_begin) if stop_loops else None
        if cut is not None:
            del seq[cut:]
            done[row] = True

    with torch.no_grad():
        encoded = model.get_encoder()(features.to(device, dtype=model.dtype)).last_hidden_state
        cache = None
        step_ids, step_pos = ids, positions
        first = True
        before: list[list[int]] = []  # per row, the tokens generated before the step (after the first)
        while batch and not all(done):
            # The decoder, then the vocabulary projection of the positions read only: the
            # model's own forward projects every position, and the first step's are the
            # whole prompt (up to ~50 tokens a row, each a 384 x 51864 product in tiny).
            out = model.model(
                encoder_outputs=(encoded,),
                decoder_input_ids=step_ids,
                decoder_attention_mask=mask,
                decoder_position_ids=step_pos,
                **{_CACHE_KWARG: cache},
                use_cache=True,
            )
            cache = out.past_key_values
            # Positions fed in this step: the row's last token, then its draft or proposal.
            hidden = out.last_hidden_state[:, width - 1 :] if first else out.last_hidden_state
            kept = verify_drafts(
                model, hidden, drafts, suppress, rules, take, done, histories=None if first else before
            )
            # A row's draft tokens past what it kept are not its text: out of attention.
            fed = width - 1 if first else mask.shape[1] - 1 - depth
            for row, n in enumerate(kept):
                mask[row, fed + 1 + n :] = 0
            first = False
            if all(done):
                break
            # Every row goes on from its last token (a finished row feeds <|endoftext|>), at
            # the position after its prefix and the tokens before it, followed by what its own
            # prompt and tokens propose (``lookup_proposal``), within its cap.
            before = [list(g) for g in generated]
            drafts = [
                []
                if done[r]
                else _until_eos(lookup_proposal(prefixes[r] + generated[r]), eos)[
                    : caps[r] - len(generated[r]) - 1
                ]
                for r in range(batch)
            ]
            depth = max(len(d) for d in drafts)
            step_ids = torch.full((batch, 1 + depth), eos, dtype=torch.long)
            block = torch.zeros((batch, 1 + depth), dtype=torch.long)
            for r in range(batch):
                step_ids[r, : 1 + len(drafts[r])] = torch.tensor(
                    [eos if done[r] else generated[r][-1]] + drafts[r], dtype=torch.long
                )
                block[r, : 1 + len(drafts[r])] = 1
            start = torch.tensor([[len(prefixes[r]) + len(generated[r]) - 1] for r in range(batch)])
            step_ids, step_pos = step_ids.to(device), (start + torch.arange(1 + depth)).to(device)
            mask = torch.cat([mask, block.to(device)], dim=1)
    return [complete_segments(g, timestamp_begin, eos) for g in generated]


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def verify_drafts(
    model: nn.Module,
    hidden: torch.Tensor,
    drafts: Sequence[Sequence[int]],
    suppress: Suppression,
    rules: TimestampRules,
    take: Callable[[int, int], None],
    done: list[bool],
    histories: Sequence[Sequence[int]] | None = None,
) -> list[int]:
    """One step of ``greedy_decode``: each row's next tokens from one forward pass.

    ``hidden`` [B, 1 + depth, d] is the decoder output at the row's last fed token and at
    each draft token after it. Position ``k`` of a row gives the greedy choice after its
    first ``k`` draft tokens (the suppression and timestamp rules applied as if they had
    been generated); the row takes that choice (``take``) and goes on while it is the
    draft's next token, so its tokens are the ones step-by-step decoding would give.

    ``histories``: per row, the tokens generated before this step; None for the first step
    (nothing generated yet, the draft is the previous decoding and every position is
    projected at once). In later steps (drafts from ``lookup_proposal``, often wrong) the
    draft's positions are projected only for rows whose first choice took its first token:
    a vocabulary projection per position costs about as much as a decoding step.
    Returns, per row, how many draft tokens it kept: those after them are no part of its text.
    """
    first = histories is None
    before = [[] for _ in drafts] if histories is None else histories
    rows = [r for r in range(len(drafts)) if not done[r]]
    kept = [0] * len(drafts)
    if not rows:
        return kept

    def choices(spans: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
        index_r = torch.tensor([r for r, _ in spans], device=hidden.device)
        index_k = torch.tensor([k for _, k in spans], device=hidden.device)
        scores = model.proj_out(hidden[index_r, index_k]).float()  # [spans, V]
        scores = suppress(scores, [first and k == 0 for _, k in spans])
        scores = rules(scores, [list(before[r]) + list(drafts[r][:k]) for r, k in spans])
        return dict(zip(spans, scores.argmax(-1).tolist()))

    if first:
        chosen = choices([(r, k) for r in rows for k in range(len(drafts[r]) + 1)])
    else:
        chosen = choices([(r, 0) for r in rows])
        rest = [
            (r, k)
            for r in rows
            if drafts[r] and chosen[(r, 0)] == drafts[r][0]
            for k in range(1, len(drafts[r]) + 1)
        ]
        if rest:
            chosen |= choices(rest)
    for r in rows:
        n = len(drafts[r])
        for k in range(n + 1):
            token = chosen[(r, k)]
            take(r, token)
            if done[r] or k == n or token != drafts[r][k]:
                break
            kept[r] = k + 1
    return kept
