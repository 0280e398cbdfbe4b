"""The Whisper family: log-mel features, prefixed labels, loss, and decoding at per-example ranks.

Ranks and decoding: transformers expands a batch for beam search with
``repeat_interleave`` (``_expand_inputs_for_generation``) and reorders beams only within
each example's group, which is the expansion the adapted layers assume; the encoder runs
once on the unexpanded batch. Short-form Whisper generation (audio within the encoder
window) is one plain ``generate`` call on the whole batch. Long-form generation is not:
it drops finished utterances from the batch between 30-s windows, so the rows no longer
line up with the ranks. Utterances longer than the window are therefore decoded one at a
time, each under its own rank (``use_ranks(model, rows=[row])``), with transformers'
sequential long-form decoding (timestamps, window by window).

``audio_ctx`` (as in whisper.cpp): the encoder can run on a window shorter than 30 s,
e.g. 500 positions = 10 s. Self-attention cost grows with the square of the window, so
this is what makes CPU training affordable on short utterances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch import nn

from flexispeech.audio import SAMPLE_RATE
from flexispeech.errors import ConfigError
from flexispeech.host_copy import to_device
from flexispeech.lora.ranks import use_ranks
from flexispeech.models.common import batch_labels, checked_labels, from_pretrained, resolve_source
from flexispeech.models.encoder_reuse import EncoderCache, reuse_encoder
from flexispeech.models.example import Example
from flexispeech.models.whisper_greedy import greedy_decode

DEFAULT_SOURCE = "whisper-tiny.en"
HOP_LENGTH = 160  # samples per mel frame: 10 ms at 16 kHz
FRAMES_PER_POSITION = 2  # the encoder's second conv has stride 2
SAMPLES_PER_POSITION = HOP_LENGTH * FRAMES_PER_POSITION  # 320 samples = 20 ms per encoder position
POSITIONS_PER_SECOND = SAMPLE_RATE // SAMPLES_PER_POSITION  # 16000 / 320 = 50 encoder positions per second
FULL_POSITIONS = 1500  # 30 s / 20 ms
FULL_EMBED_ATTR = "_flexispeech_full_positions"
FRAMES_PER_SECOND = 100  # mel frames per second (10-ms hop)
TOKENS_PER_SECOND = 15  # Whisper's decoder budget: 448 tokens per 30-s window
PREFIX_ALLOWANCE = 8  # decoder positions left for the prefix (<|startoftranscript|>, language, task, ...)


def encoder_positions(model: nn.Module) -> int:
    """The encoder window in positions (1500 = 30 s unless ``set_audio_ctx`` shortened it)."""
    return int(model.config.max_source_positions)


def set_audio_ctx(model: nn.Module, n_positions: int, processor: Any | None = None) -> None:
    """Run the encoder on ``n_positions`` positions (``n_positions * 20 ms`` of audio)
    instead of 30 s: the positional embedding is cut to its first ``n_positions`` rows and
    ``config.max_source_positions`` set, so the encoder accepts ``2 * n_positions`` mel
    frames; ``processor``'s feature extractor then pads/trims audio to that length.

    The full embedding is kept aside, so a later call can widen the window again (up to
    the original). Save checkpoints with the full window: the config is changed in place.
    """
    encoder = model.get_encoder()
    full = encoder.__dict__.get(FULL_EMBED_ATTR)
    if full is None:
        full = encoder.embed_positions.weight.detach().clone()
        encoder.__dict__[FULL_EMBED_ATTR] = full
    if not 1 <= n_positions <= full.shape[0]:
        raise ConfigError(f"audio_ctx: must be in [1, {full.shape[0]}] encoder positions, got {n_positions}")
    embed = nn.Embedding(n_positions, full.shape[1], device=full.device, dtype=full.dtype)
    with torch.no_grad():
        embed.weight.copy_(full[:n_positions])
    embed.weight.requires_grad_(False)
    encoder.embed_positions = embed
    encoder.max_source_positions = n_positions
    encoder.config.max_source_positions = n_positions
    model.config.max_source_positions = n_positions
    if processor is not None:
        set_feature_window(processor, n_positions)


def set_feature_window(processor: Any, n_positions: int) -> None:
    """Make ``processor`` pad/trim audio to ``n_positions`` encoder positions."""
    fe = processor.feature_extractor
    fe.n_samples = n_positions * SAMPLES_PER_POSITION
    fe.nb_max_frames = n_positions * FRAMES_PER_POSITION


class WhisperFamily:
    """``ModelFamily`` for ``WhisperForConditionalGeneration`` (English transcription)."""

    name = "whisper"
    default_targets = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    language = "en"  # for multilingual checkpoints: the prefix <|en|><|transcribe|>

    def load(
        self, source: str = DEFAULT_SOURCE, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> tuple[nn.Module, Any]:
        """Model (eval mode) and ``WhisperProcessor``. ``source``: a name for
        ``pretrained_path`` (default ``whisper-tiny.en``), a local transformers directory,
        a hub id, or ``random:tiny`` (random weights, for tests and demos)."""
        from flexispeech.models.random_init import parse_random_source, random_whisper

        size = parse_random_source(source)
        if size is not None:
            model, processor = random_whisper(size)
        else:
            from transformers import WhisperForConditionalGeneration, WhisperProcessor

            path = resolve_source(source)
            processor = from_pretrained(WhisperProcessor.from_pretrained, path, "Whisper processor")
            model = from_pretrained(WhisperForConditionalGeneration.from_pretrained, path, "Whisper model")
        self.set_prefix(model, processor)
        if encoder_positions(model) != FULL_POSITIONS:
            set_feature_window(processor, encoder_positions(model))
        return model.to(device=device, dtype=dtype).eval(), processor

    def set_prefix(self, model: nn.Module, processor: Any) -> None:
        """Labels start as decoding does: ``<|startoftranscript|>`` (+ ``<|en|><|transcribe|>``
        for multilingual models) ``<|notimestamps|>``.

        A multilingual model's ``generate`` is also told the language: without
        ``generation_config.language`` transformers detects it for each clip, so beam search
        and long-form decoding (clips longer than the window) would not force the
        ``<|en|>`` that the labels and ``whisper_greedy`` use (white noise came out as
        ``<|nn|>``)."""
        multilingual = bool(getattr(model.generation_config, "is_multilingual", False))
        if multilingual:
            processor.tokenizer.set_prefix_tokens(
                language=self.language, task="transcribe", predict_timestamps=False
            )
            model.generation_config.language = self.language
            model.generation_config.task = "transcribe"
        else:
            processor.tokenizer.set_prefix_tokens(predict_timestamps=False)

    def collate(
        self,
        processor: Any,
        examples: Sequence[Example],
        train: bool = True,
        device: str | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Batch of ``input_features`` [B, n_mels, frames] float32, ``num_frames`` [B] (true
        length of each clip in mel frames) and, when ``train``, ``labels`` [B, L].

        ``frames`` is the encoder window (``2 * audio_ctx``): clips are padded or cut to it.
        ``device``: where the log-mel is computed (transformers' torch STFT; None: the CPU).
        For decoding (``train=False``) a batch holding a clip longer than the window keeps
        every clip whole (padded to the longest) so that ``generate`` can decode it
        window by window. Labels: the prefix tokens (after ``<|startoftranscript|>``,
        which the model's right shift puts back as the first decoder input), the text
        with Whisper's leading space, ``<|endoftext|>``; padding is -100. ``labels``: the
        examples' ``labels(processor, texts)`` [B, L] made beforehand (by the training
        loader's workers), taken as they are instead of tokenising the texts here.
        """
        fe = processor.feature_extractor
        audios = [_audio(ex) for ex in examples]
        lengths = [len(a) for a in audios]
        long_form = not train and max(lengths) > fe.n_samples
        kwargs: dict[str, Any] = {"sampling_rate": SAMPLE_RATE, "return_tensors": "pt"}
        if (
            device is not None
        ):  # the log-mel's STFT on that device (a batch of 30-s clips: ~1 s on one CPU core)
            kwargs["device"] = str(device)
        if long_form:
            kwargs.update(truncation=False, padding="longest")
        features = fe(audios, **kwargs).input_features
        num_frames = torch.tensor(
            [min(n // HOP_LENGTH, features.shape[-1]) for n in lengths], dtype=torch.long
        )
        batch = {"input_features": features.float(), "num_frames": num_frames}
        if train:
            batch["labels"] = batch_labels(
                labels, [ex.text for ex in examples], lambda texts: self.labels(processor, texts)
            )
        return batch

    def collate_waveforms(
        self, processor: Any, audio: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor] | None:
        """``collate(train=True)`` of waveforms already on a device, without a host round trip:
        ``audio`` [B, T] (zero past ``lengths`` [B]) -> ``input_features`` [B, n_mels, frames]
        and ``num_frames`` [B] on ``audio``'s device, and ``labels`` [B, L] (the rows'
        ``labels(processor, texts)``, tokenised beforehand: in the training loop, by the
        loader's workers) as given. None when the processor's extractor is not one
        ``whisper_features.log_mel`` reproduces.
        ``num_frames`` stays on the device: reading ``lengths`` back to the host would wait
        for every queued kernel (the previous training step's included)."""
        from flexispeech.models.whisper_features import device_log_mel_supported, log_mel

        fe = processor.feature_extractor
        if not device_log_mel_supported(fe):
            return None
        features = log_mel(fe, audio)
        frames = torch.clamp(lengths.to(features.device) // HOP_LENGTH, max=features.shape[-1]).long()
        return {
            "input_features": features,
            "num_frames": frames,
            "labels": checked_labels(labels, len(audio)),
        }

    def labels(self, processor: Any, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [B, L] of ``texts`` as the decoder must predict them, -100 padded."""
        tok = processor.tokenizer
        sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
        rows = []
        for text in texts:
            ids = tok(" " + text.strip()).input_ids  # Whisper's words carry their leading space
            rows.append(ids[1:] if ids and ids[0] == sot else ids)
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def cached_train_inputs(
        self,
        model: nn.Module,
        processor: Any,
        split: Any,
        n_layers: int,
        key: str = "",
        progress: bool = False,
    ) -> Any:
        """Training inputs that start from encoder layer ``n_layers``: the frozen layers'
        output of every row of ``split`` is computed once (``whisper_prefix``)."""
        from functools import partial

        from flexispeech.models.whisper_prefix import PrefixInputs, build_prefix_cache

        def features(examples: list[Example]) -> torch.Tensor:
            return self.collate(processor, examples, train=False)["input_features"]

        cache = build_prefix_cache(model, features, split, n_layers, progress, key)
        return PrefixInputs(
            cache, partial(self.labels, processor), [str(r["text"]) for r in split.rows], n_layers
        )

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token-level cross entropy (mean over label tokens that are not -100)."""
        param = next(model.parameters())  # not model.dtype: a DDP wrapper has no .dtype
        out = model(
            input_features=batch["input_features"].to(param.device, dtype=param.dtype),
            labels=to_device(batch["labels"], param.device),  # pinned: see flexispeech.host_copy
        )
        return out.loss

    def label_logprob(
        self, model: nn.Module, batch: dict[str, torch.Tensor], labels: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Log-probabilities the model (at the ranks in force) gives candidate transcripts.

        Args:
            batch: decoding inputs of B clips (``collate(train=False)``).
            labels: C candidates, each [B, L_c] long as ``labels`` makes them (-100 padded):
                candidate c of row b is ``labels[c][b]``.

        Returns:
            [C, B] float32 on the CPU: each candidate's summed token log-probability
            (the prefix tokens after ``<|startoftranscript|>`` included, as the training
            loss counts them; the same for every candidate of a row, so they cancel when
            candidates are compared). NaN for a clip longer than the encoder window, whose
            transcript spans several windows and has no single score here.

        The encoder runs once for all C candidates (it is most of the cost at a 30-s
        window); each candidate is one teacher-forced decoder pass.
        """
        device = next(model.parameters()).device
        features = batch["input_features"].to(device, dtype=model.dtype)
        window = encoder_positions(model) * FRAMES_PER_POSITION
        n = features.shape[0]
        num_frames = batch.get("num_frames", torch.full((n,), min(features.shape[-1], window)))
        too_long = torch.tensor([int(f) > window for f in num_frames], dtype=torch.bool)
        start = model.config.decoder_start_token_id
        out = torch.empty(len(labels), n, dtype=torch.float32)
        with torch.no_grad():
            encoded = model.model.encoder(first_window(features, window)).last_hidden_state
            for c, lab in enumerate(labels):
                lab = lab.to(device)
                inputs = torch.cat([torch.full_like(lab[:, :1], start), lab[:, :-1]], dim=1)
                inputs = inputs.masked_fill(inputs == -100, int(model.generation_config.eos_token_id))
                hidden = model.model.decoder(
                    input_ids=inputs, encoder_hidden_states=encoded
                ).last_hidden_state
                logp = torch.log_softmax(model.proj_out(hidden).float(), dim=-1)
                mask = lab != -100
                picked = logp.gather(-1, lab.clamp(min=0)[..., None])[..., 0]
                out[c] = torch.where(mask, picked, 0.0).sum(-1).cpu()
        return out.masked_fill(too_long[None, :], float("nan"))

    def reuse_encoder(self, model: nn.Module) -> AbstractContextManager[EncoderCache]:
        """``models.encoder_reuse.reuse_encoder``: each clip's encoder output kept per rank."""
        return reuse_encoder(model)

    def generate(
        self,
        model: nn.Module,
        processor: Any,
        batch: dict[str, torch.Tensor],
        num_beams: int = 1,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Greedy (``num_beams=1``) or beam-search transcripts, one per example.

        Clips within the encoder window are decoded together in one batched call; longer
        clips one at a time with long-form decoding (see the module docstring for why).
        """
        tokens = self.generate_ids(model, batch, num_beams=num_beams, max_new_tokens=max_new_tokens)
        # Lists of ids, not tensors: transformers 5.17's Whisper tokenizer tests a tensor's truth value.
        texts = processor.tokenizer.batch_decode([t.tolist() for t in tokens], skip_special_tokens=True)
        return [t.strip() for t in texts]

    def generate_ids(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        num_beams: int = 1,
        max_new_tokens: int | None = None,
        fast: bool = True,
    ) -> list[torch.Tensor]:
        """Generated token ids per example (1-D tensors, prefix and special tokens included).

        ``max_new_tokens``: None gives each batch ``decode_budget`` (at the full window, that
        of its longest clip).
        ``fast``: greedy decoding of clips within the window goes through
        ``whisper_greedy.greedy_decode`` (the same tokens as ``generate``, a fraction of its
        host time, CUDA graphs on a GPU); False keeps transformers' ``generate``.
        """
        device = next(model.parameters()).device
        features = batch["input_features"].to(device, dtype=model.dtype)
        window = encoder_positions(model) * FRAMES_PER_POSITION
        n = features.shape[0]
        num_frames = batch.get("num_frames", torch.full((n,), min(features.shape[-1], window)))
        long_rows = [i for i in range(n) if features.shape[-1] > window and int(num_frames[i]) > window]
        short_rows = [i for i in range(n) if i not in long_rows]
        kwargs: dict[str, Any] = {"num_beams": num_beams}
        if max_new_tokens is None and window < FULL_POSITIONS * FRAMES_PER_POSITION:
            max_new_tokens = decode_budget(model, [window])  # the shortened window's budget
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        out: list[torch.Tensor | None] = [None] * n
        with torch.no_grad():
            if short_rows:
                sub = first_window(features[short_rows], window)
                budget = max_new_tokens
                if budget is None:
                    budget = decode_budget(model, [int(num_frames[i]) for i in short_rows])
                with use_ranks(model, rows=short_rows):
                    if num_beams == 1 and fast:
                        seqs = greedy_decode(model, sub, budget).sequences
                    else:
                        # One decoding call: without it transformers re-runs rows whose output
                        # holds a timestamp token on the rest of the window, with a smaller batch.
                        seqs = model.generate(
                            sub,
                            return_timestamps=False,
                            force_unique_generate_call=True,
                            num_beams=num_beams,
                            max_new_tokens=budget,
                        )
                for row, seq in zip(short_rows, seqs):
                    out[row] = seq.cpu()
            for row in long_rows:
                clip = features[row : row + 1, :, : int(num_frames[row])]
                with use_ranks(model, rows=[row]):
                    seq = model.generate(
                        clip, return_timestamps=True, condition_on_prev_tokens=False, **kwargs
                    )
                out[row] = (seq["sequences"] if isinstance(seq, dict) else seq)[0].cpu()
        return [t for t in out if t is not None]


def first_window(features: torch.Tensor, window: int) -> torch.Tensor:
    """The first ``window`` mel frames of ``features`` [B, n_mels, frames]; a batch cut
    shorter by its caller is padded to the window with log-mel silence (its minimum)."""
    features = features[:, :, :window]
    if features.shape[-1] < window:
        features = nn.functional.pad(features, (0, window - features.shape[-1]), value=float(features.min()))
    return features


def token_budget(model: nn.Module, num_frames: Sequence[int]) -> int:
    """Tokens a batch may generate: Whisper's 15 per second (448 per 30-s window) of its
    longest clip, cut to the window. A batch of 3-s clips with one hallucinating row then
    stops after 45 steps, not 448. ``num_frames``: each clip's length in mel frames."""
    window = encoder_positions(model) * FRAMES_PER_POSITION
    longest = max(min(int(f), window) for f in num_frames)
    budget = math.ceil(TOKENS_PER_SECOND * longest / FRAMES_PER_SECOND)
    # transformers refuses a budget that, with the prefix tokens, passes the decoder's 448
    # positions: a full 30-s clip gets 448 less the prefix.
    return max(1, min(budget, int(model.config.max_target_positions) - PREFIX_ALLOWANCE))


def decode_budget(model: nn.Module, num_frames: Sequence[int]) -> int:
    """The token budget of one greedy decoding batch, the same in every pass (evaluation,
    the proxy's first pass): a shortened window (``audio_ctx``) gets Whisper's budget for
    the window (15 tokens per second, so a hallucinating row stops early), the full window
    ``token_budget`` of the batch's longest clip (``num_frames`` in mel frames)."""
    window = encoder_positions(model) * FRAMES_PER_POSITION
    if window < FULL_POSITIONS * FRAMES_PER_POSITION:
        return math.ceil(TOKENS_PER_SECOND * window / FRAMES_PER_SECOND)
    return token_budget(model, num_frames)


def _audio(example: Example) -> np.ndarray:
    if example.audio is None:
        raise ConfigError(f"example {example.id!r}: the whisper family needs audio")
    return np.asarray(example.audio, dtype=np.float32)


FAMILY = WhisperFamily()
