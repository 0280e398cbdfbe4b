"""The causal-LM family: prompt -> answer text tasks (e.g. SmolLM2-135M-Instruct) at per-example ranks.

Training sequences are ``prompt + answer + eos`` with the prompt tokens masked out of the
loss (-100), right padded. For generation the prompts are left padded, so every row's
new tokens start at the same position and ``generate`` returns only those. The prompt
is rendered with the tokenizer's chat template when it has one (user turn, then the
assistant header), and as ``"Question: ...\\nAnswer:"`` otherwise.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from flexispeech.errors import ConfigError
from flexispeech.models.common import from_pretrained, resolve_source
from flexispeech.models.example import Example

DEFAULT_SOURCE = "smollm2-135m-instruct"
DEFAULT_MAX_NEW_TOKENS = 64  # answers of the text tasks are short


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the (possibly DDP-wrapped) model's forward takes ``logits_to_keep``, as
    transformers' Llama-style causal LMs do."""
    import inspect

    inner = getattr(model, "module", model)
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """The text the model continues: the chat format's user turn + assistant header, or
    the plain question format for tokenizers without a chat template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return f"Question: {prompt}\nAnswer:"


# end_token_id per tokenizer object, keyed by what it is derived from (a user may swap the
# template); weak, so a cached tokenizer does not outlive its model.
_END_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def end_token_id(tokenizer: Any) -> int:
    """The token that ends an answer, trained after every target and stopping generation.

    With a chat template it is the template's end-of-turn token (the first token the
    template writes after an assistant message: ``<|im_end|>`` for SmolLM2), not
    ``tokenizer.eos_token``, which converters do not always agree on: transformers 5.17
    reads SmolLM2's GGUF with ``eos_token = <|im_start|>``, 5.24 with ``<|im_end|>``. An
    adapter trained to end on ``<|im_start|>`` never emits the generation config's
    ``<|im_end|>`` and runs on into a made-up next turn. Without a template: eos.
    Rendering the template costs ~1 ms, so the result is cached per tokenizer (every
    collate and generate call asks).
    """
    template = getattr(tokenizer, "chat_template", None)
    key = (template, tokenizer.eos_token_id)
    try:
        cached = _END_CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable: compute every time
        cached = None
    if cached is not None and cached[0] == key:
        return cached[1]
    end = _end_token_id(tokenizer) if template else int(tokenizer.eos_token_id)
    try:
        _END_CACHE[tokenizer] = (key, end)
    except TypeError:
        pass
    return end


def _end_token_id(tokenizer: Any) -> int:
    """The first token the chat template writes after an assistant message (eos if none)."""
    marker = "\u2063answer\u2063"  # invisible separators: text no template adds itself
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    after = text[text.rindex(marker) + len(marker) :]
    ids = tokenizer(after, add_special_tokens=False).input_ids if after else []
    return int(ids[0]) if ids else int(tokenizer.eos_token_id)


def render_answer(tokenizer: Any, answer: str) -> str:
    """The answer as it follows the rendered prompt (plain format: after one space)."""
    return answer if getattr(tokenizer, "chat_template", None) else " " + answer


class CausalLmFamily:
    """``ModelFamily`` for ``AutoModelForCausalLM`` models with a (fast) tokenizer."""

    name = "causal_lm"
    default_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def load(
        self, source: str = DEFAULT_SOURCE, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> tuple[nn.Module, Any]:
        """Model (eval mode) and tokenizer from a name for ``pretrained_path``, a directory,
        a hub id or ``random:tiny``. A directory holding one ``.gguf`` file is loaded from
        it (dequantized; needs the ``gguf`` package)."""
        from flexispeech.models.random_init import parse_random_source, random_causal_lm

        size = parse_random_source(source)
        if size is not None:
            model, tokenizer = random_causal_lm(size)
        else:
            from pathlib import Path

            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = resolve_source(source)
            kwargs: dict[str, Any] = {}
            ggufs = sorted(Path(path).glob("*.gguf")) if Path(path).is_dir() else []
            if len(ggufs) == 1 and not (Path(path) / "config.json").is_file():
                kwargs["gguf_file"] = ggufs[0].name
            tokenizer = from_pretrained(AutoTokenizer.from_pretrained, path, "tokenizer", **kwargs)
            model = from_pretrained(AutoModelForCausalLM.from_pretrained, path, "causal LM", **kwargs)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model.to(device=device, dtype=dtype).eval(), tokenizer

    def _prompt_ids(self, tokenizer: Any, examples: Sequence[Example]) -> list[list[int]]:
        rows = []
        for ex in examples:
            if ex.prompt is None:
                raise ConfigError(f"example {ex.id!r}: the causal_lm family needs a prompt")
            rows.append(tokenizer(render_prompt(tokenizer, ex.prompt), add_special_tokens=False).input_ids)
        return rows

    def collate(
        self, processor: Any, examples: Sequence[Example], train: bool = True, device: str | None = None
    ) -> dict[str, torch.Tensor]:
        """``train``: ``input_ids``/``attention_mask``/``labels`` [B, L], right padded, labels
        -100 on the prompt and padding. Otherwise: left-padded prompts ``input_ids`` and
        ``attention_mask`` [B, L] for ``generate``."""
        tok = processor
        prompts = self._prompt_ids(tok, examples)
        pad = tok.pad_token_id
        if not train:
            width = max(len(p) for p in prompts)
            ids = torch.full((len(prompts), width), pad, dtype=torch.long)
            mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for i, p in enumerate(prompts):
                ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p) :] = 1
            return {"input_ids": ids, "attention_mask": mask}
        seqs, n_prompt = [], []
        end = end_token_id(tok)
        for ex, p in zip(examples, prompts):
            answer = tok(render_answer(tok, ex.text), add_special_tokens=False).input_ids + [end]
            seqs.append(p + answer)
            n_prompt.append(len(p))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, (s, k) in enumerate(zip(seqs, n_prompt)):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
            labels[i, k : len(s)] = torch.tensor(s[k:], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def answer_nll(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed negative log-likelihood (nats) of each row's labelled tokens, and their count.

        The output head runs only from the first position that predicts a labelled token:
        on a ~500-token QA prompt with a 5-token answer, the vocabulary projection (576 x
        49,152 for SmolLM2, a fifth of the model's FLOPs per position) and its log-softmax
        are skipped on the prompt. Models whose forward lacks ``logits_to_keep`` get full logits.

        Args:
            batch: ``input_ids``, ``attention_mask``, ``labels`` [B, L] from ``collate(train=True)``.

        Returns:
            ``nll`` [B] float32 and ``n_tokens`` [B] int64.
        """
        device = next(model.parameters()).device
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        answer_cols = (labels != -100).any(dim=0).nonzero()
        # Position p predicts token p + 1: logits from position first - 1 on cover every label.
        first = max(int(answer_cols[0]) if len(answer_cols) else ids.shape[1] - 1, 1)
        if _accepts_logits_to_keep(model):
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=ids.shape[1] - first + 1).logits
        else:
            logits = model(input_ids=ids, attention_mask=mask).logits[:, first - 1 :]
        targets = labels[:, first:]  # [B, L - first]
        nll = nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).view(targets.shape)
        return nll.sum(dim=1), (targets != -100).sum(dim=1)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross entropy over the answer tokens (and eos) of the batch: the model's own
        ``labels=`` loss, computed through :meth:`answer_nll`."""
        nll, n_tokens = self.answer_nll(model, batch)
        return nll.sum() / n_tokens.sum().clamp(min=1)

    def generate(
        self,
        model: nn.Module,
        processor: Any,
        batch: dict[str, torch.Tensor],
        num_beams: int = 1,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Only the new text of each row (greedy, or beam search), special tokens skipped.

        Generation stops at :func:`end_token_id` (what the adapters are trained to end
        with) as well as at the model's own end-of-sequence tokens."""
        device = next(model.parameters()).device
        ids = batch["input_ids"].to(device)
        own = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        stops = sorted(
            {end_token_id(processor), *([] if own is None else [own] if isinstance(own, int) else own)}
        )
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=batch["attention_mask"].to(device),
                num_beams=num_beams,
                do_sample=False,
                max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                pad_token_id=processor.pad_token_id,
                eos_token_id=stops,
            )
        new = out[:, ids.shape[1] :].cpu()
        return [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]


FAMILY = CausalLmFamily()
