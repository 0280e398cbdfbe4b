"""The Wav2Vec2 family: CTC over characters, at per-example ranks.

No Wav2Vec2 weights are packaged for offline use, so ``load`` takes a transformers
directory or hub id (e.g. ``facebook/wav2vec2-base-960h`` where a hub is reachable) or
``random:tiny``, a small random-initialised model with a character vocabulary for tests
and CPU demos. Every row of a batch goes through the encoder independently (given the
attention mask), so the per-example ranks of ``use_ranks`` line up with the rows.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from flexispeech.audio import SAMPLE_RATE
from flexispeech.errors import ConfigError
from flexispeech.models.common import batch_labels, from_pretrained, resolve_source
from flexispeech.models.example import Example


def normalize_text(text: str, vocab: dict[str, int]) -> str:
    """Text as the character vocabulary spells it: case folded to the vocabulary's case,
    characters it lacks dropped, runs of spaces collapsed."""
    upper = any(ch.isupper() for ch in vocab if len(ch) == 1)
    text = text.upper() if upper else text.lower()
    text = "".join(ch if (ch in vocab or ch == " ") else " " for ch in text)
    return re.sub(r"\s+", " ", text).strip()


class Wav2Vec2Family:
    """``ModelFamily`` for ``Wav2Vec2ForCTC`` (and other CTC models with its processor)."""

    name = "wav2vec2"
    # Attention projections and the feed-forward pair of every encoder layer.
    default_targets = ("q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense")

    def load(
        self, source: str, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> tuple[nn.Module, Any]:
        """Model (eval mode) and ``Wav2Vec2Processor`` from a directory, hub id or ``random:tiny``."""
        from flexispeech.models.random_init import parse_random_source, random_wav2vec2

        size = parse_random_source(source)
        if size is not None:
            model, processor = random_wav2vec2(size)
        else:
            from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

            path = resolve_source(source)
            processor = from_pretrained(Wav2Vec2Processor.from_pretrained, path, "Wav2Vec2 processor")
            model = from_pretrained(Wav2Vec2ForCTC.from_pretrained, path, "Wav2Vec2 model")
        return model.to(device=device, dtype=dtype).eval(), processor

    def collate(
        self,
        processor: Any,
        examples: Sequence[Example],
        train: bool = True,
        device: str | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``input_values`` [B, T] (normalised, zero padded), ``attention_mask`` [B, T] and,
        when ``train``, ``labels`` [B, L] (``labels`` of the examples' texts). ``labels``:
        those made beforehand (by the training loader's workers), taken as they are."""
        audios = []
        for ex in examples:
            if ex.audio is None:
                raise ConfigError(f"example {ex.id!r}: the wav2vec2 family needs audio")
            audios.append(np.asarray(ex.audio, dtype=np.float32))
        inputs = processor.feature_extractor(
            audios,
            sampling_rate=SAMPLE_RATE,
            padding="longest",
            return_attention_mask=True,
            return_tensors="pt",
        )
        batch = {"input_values": inputs.input_values.float(), "attention_mask": inputs.attention_mask.long()}
        if train:
            batch["labels"] = batch_labels(
                labels, [ex.text for ex in examples], lambda texts: self.labels(processor, texts)
            )
        return batch

    def labels(self, processor: Any, texts: Sequence[str]) -> torch.Tensor:
        """Character ids [B, L] of ``texts`` (``normalize_text`` to the vocabulary), -100
        padded; L is at least 1 (an empty text is a row of padding)."""
        tok = processor.tokenizer
        vocab = tok.get_vocab()
        rows = [tok(normalize_text(text, vocab)).input_ids for text in texts]
        labels = torch.full((len(rows), max(1, max(len(r) for r in rows))), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            labels[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return labels

    def _inputs(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        inputs = {"input_values": batch["input_values"].to(device, dtype=model.dtype)}
        # Base-size checkpoints (group-norm front end) were trained without a mask and
        # expect zero padding instead; the others need the mask.
        if getattr(model.config, "feat_extract_norm", "layer") == "layer":
            inputs["attention_mask"] = batch["attention_mask"].to(device)
        return inputs

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """CTC loss of the batch (the model's reduction, ``mean`` for ``random:tiny``)."""
        return model(
            **self._inputs(model, batch), labels=batch["labels"].to(next(model.parameters()).device)
        ).loss

    def label_logprob(
        self, model: nn.Module, batch: dict[str, torch.Tensor], labels: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Log-probabilities the model (at the ranks in force) gives candidate transcripts:
        [C, B] float32 on the CPU, each the CTC log-likelihood of candidate c of row b
        (``labels[c]`` [B, L_c], as ``labels`` makes them) summed over every alignment; -inf
        where no alignment fits the clip's frames. The acoustic model runs once for all C
        candidates; each candidate costs one CTC forward pass over its log-probabilities."""
        with torch.no_grad():
            logits = model(**self._inputs(model, batch)).logits.float()  # [B, frames, vocab]
        log_probs = torch.log_softmax(logits, dim=-1).transpose(0, 1).cpu()  # [frames, B, vocab]
        n, frames = logits.shape[0], logits.shape[1]
        if "attention_mask" in batch:
            lengths = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1)).cpu()
        else:
            lengths = torch.full((n,), frames)
        lengths = lengths.long().clamp(max=frames)
        out = torch.empty(len(labels), n, dtype=torch.float32)
        for c, lab in enumerate(labels):
            lab = lab.cpu()
            nll = nn.functional.ctc_loss(
                log_probs,
                lab.clamp(min=0),
                lengths,
                (lab != -100).sum(-1),
                blank=int(model.config.pad_token_id),
                reduction="none",
                zero_infinity=False,
            )
            out[c] = -nll
        return out

    def reuse_encoder(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        """Nothing kept: CTC's acoustic model is the whole network, so a scoring pass could
        only reuse the decoding's logits at the same rank, which no caller holds yet."""
        return contextlib.nullcontext()

    def generate(
        self,
        model: nn.Module,
        processor: Any,
        batch: dict[str, torch.Tensor],
        num_beams: int = 1,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Greedy CTC decoding (best class per frame, repeats merged, blanks dropped).

        ``num_beams`` > 1 is not supported without a language model: greedy is what CTC
        beam search without an LM returns up to ties, so it raises instead of pretending.
        """
        if num_beams != 1:
            raise ConfigError(
                "wav2vec2: beam search needs an n-gram LM decoder; use num_beams=1 (greedy CTC)"
            )
        with torch.no_grad():
            logits = model(**self._inputs(model, batch)).logits  # [B, frames, vocab]
        ids = logits.argmax(dim=-1).cpu()
        # Frames that only cover padding must not emit characters.
        if "attention_mask" in batch:
            frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1)).cpu()
            pad = processor.tokenizer.pad_token_id
            for i, n in enumerate(frames.tolist()):
                ids[i, int(n) :] = pad
        return [t.strip() for t in processor.batch_decode(ids)]


FAMILY = Wav2Vec2Family()
