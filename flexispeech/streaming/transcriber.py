"""Load a speech model (+ a Flexi-LoRA adapter), route each utterance to a rank, transcribe.

``Transcriber`` is what ``flexispeech transcribe`` runs, and what the streaming and
evaluation code reuse: arrays or files in, one ``Transcription`` per utterance out.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flexispeech.audio import SAMPLE_RATE, audio_duration, check_samples, iter_audio_blocks, load_audio
from flexispeech.errors import AudioError, ConfigError, FlexispeechError
from flexispeech.evaluation.fallback import Fallback, decode_with_fallback, row_decoder, second_passes
from flexispeech.evaluation.joint import decode_joint, row_scorer
from flexispeech.lora.ranks import check_ranks, get_state, use_ranks
from flexispeech.lora.router import batch_size
from flexispeech.models.family import Example, check_device, get_family

# model_type values of CTC encoders that the wav2vec2 family handles
CTC_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer")
# Files longer than this are read and decoded in blocks of this many seconds, so that an
# hour-long recording is never held whole. Whisper decodes a block with its own sequential
# long-form decoding; a CTC encoder attends over the whole block, so its blocks are short.
LONG_BLOCK_S = {"whisper": 300.0}
DEFAULT_LONG_BLOCK_S = 30.0
CUT_SEARCH_S = 5.0  # a block is cut at its quietest 100 ms within its last 5 s (not mid-word)


@dataclass
class Transcription:
    """One utterance's result: ``rank`` is the routed rank (None without an adapter);
    ``fallback`` is empty unless the routed hypothesis looped and was decoded again (then, as
    in ``flexispeech eval``: its compression ratio, the fallback rank, whether that
    hypothesis was kept, and the routed rank's hypothesis; for a file decoded block by
    block, the fallback rank and how many blocks were decoded again and kept). ``joint`` is
    empty unless a joint pick (``evaluation.joint``) decoded the utterance at several ranks
    (then, as in ``flexispeech eval --joint-ranks``: each rank's hypothesis, the scores, the
    pick and the routed rank; ``rank`` is the picked one; for a file decoded block by block,
    how many blocks were scored and how many served another rank than the routed one)."""

    id: str
    text: str
    rank: int | None
    duration: float
    signals: dict[str, float] = field(default_factory=dict)
    fallback: dict[str, Any] = field(default_factory=dict)
    joint: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        row = {
            "path": self.id,
            "text": self.text,
            "rank": self.rank,
            "duration": round(self.duration, 3),
            "signals": {k: round(v, 4) for k, v in self.signals.items()},
        }
        notes = ({"fallback": self.fallback} if self.fallback else {}) | (
            {"joint": self.joint} if self.joint else {}
        )
        return json.dumps(row | notes)


def detect_family(source: str) -> str:
    """``wav2vec2`` for a local CTC checkpoint (by its config's ``model_type``), else ``whisper``."""
    config = Path(source).expanduser() / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except json.JSONDecodeError as err:
            raise ConfigError(f"{config}: invalid JSON ({err})") from None
        if model_type in CTC_MODEL_TYPES:
            return "wav2vec2"
    return "wav2vec2" if source.startswith("random:") and "wav2vec2" in source else "whisper"


class Transcriber:
    """A loaded model that transcribes batches of utterances at routed ranks.

    Args:
        model: model name or directory (``whisper-tiny.en`` by default; see ``load``).
        adapter: directory of a saved Flexi-LoRA adapter, or None for the base model.
        rank: serve every utterance at this rank (needs ``adapter``).
        router: ``"auto"`` routes with the router saved with the adapter (the default when
            the adapter has one and no ``rank`` is given); None otherwise.
        num_beams: 1 = greedy.
        family: ``whisper`` / ``wav2vec2``; None detects it from the model directory.
        audio_ctx: Whisper encoder window in positions (20 ms each); None: the window the
            adapter was trained with, 30 s without one (a warning when they differ).
        batch_size: utterances decoded together.
        fallback: decode a looping hypothesis again at another rank of the adapter
            (``evaluation.fallback``), as ``flexispeech eval --fallback-rank`` scores it;
            None: off.
        joint: ranks whose transcripts join the routed rank's in a joint pick
            (``evaluation.joint``), as ``flexispeech eval --joint-ranks`` scores it; ``[0]``:
            the routed rank and the base model. Empty: off.
        joint_weights: a weight per scoring rank on its vote in the joint pick (1 where not
            named), as ``flexispeech eval --joint-base-weight`` gives it: ``{0: 0.25}``.
    """

    def __init__(
        self,
        model: str = "whisper-tiny.en",
        adapter: str | Path | None = None,
        rank: int | None = None,
        router: str | None = None,
        num_beams: int = 1,
        device: str = "cpu",
        family: str | None = None,
        audio_ctx: int | None = None,
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        fallback: Fallback | None = None,
        joint: Sequence[int] = (),
        joint_weights: Mapping[int, float] | None = None,
    ) -> None:
        from flexispeech.lora import get_router, load_adapter
        from flexispeech.lora.inject import serving_router

        if rank is not None and router is not None:
            raise ConfigError("give either a fixed rank or a router, not both")
        if (rank is not None or router is not None) and adapter is None:
            raise ConfigError("--rank and --router need an adapter (--adapter DIR)")
        if fallback is not None and adapter is None:
            raise ConfigError(
                "--fallback-rank needs an adapter (--adapter DIR): the base model has no other rank"
            )
        if joint and adapter is None:
            raise ConfigError(
                "--joint-ranks needs an adapter (--adapter DIR): the base model has no other rank"
            )
        if router not in (None, "auto"):
            raise ConfigError(f"router must be 'auto' (the adapter's saved router), got {router!r}")
        check_device(device)
        self.family = get_family(family or detect_family(model))
        self.model, self.processor = self.family.load(model, device=device)
        if self.family.name == "whisper" and adapter is not None:
            from flexispeech.lora.io import serving_window

            audio_ctx = serving_window(audio_ctx, adapter, "transcribe")  # default: the adapter's window
        if audio_ctx is not None:
            if self.family.name != "whisper":
                raise ConfigError("audio_ctx applies to Whisper models only")
            from flexispeech.models.whisper import set_audio_ctx

            set_audio_ctx(self.model, audio_ctx, self.processor)
        self.rank = rank
        if adapter is not None:
            load_adapter(self.model, adapter)
            if router == "auto" and get_router(self.model) is None:
                raise ConfigError(f"{adapter}: --router auto, but the adapter was saved without a router")
            # before any file is read
            check_ranks(get_state(self.model).config, ([fallback.rank] if fallback else []) + list(joint))
        if joint and not hasattr(self.family, "label_logprob"):
            raise ConfigError(f"--joint-ranks: the {self.family.name} family cannot score transcripts")
        self.fallback = fallback
        self.joint = sorted(set(joint))
        self.joint_weights = dict(joint_weights or {})
        # the agreement test of the joint pick compares transcripts as eval scores them
        self.normalize = None
        if joint:
            from flexispeech.evaluation.metrics import source_normalizer

            self.normalize = source_normalizer(model)
        # a fixed rank, else the adapter's router, else r_max; None for the base model
        self.router = serving_router(self.model, rank)
        self.has_adapter = adapter is not None
        self.num_beams, self.batch_size, self.max_new_tokens = num_beams, batch_size, max_new_tokens
        self.long_block_s = LONG_BLOCK_S.get(self.family.name, DEFAULT_LONG_BLOCK_S)

    def needed_signals(self) -> set[str]:
        """Signal names the router reads (empty without a router)."""
        return set(self.router.signal_names) if self.router is not None else set()

    def ranks_for(
        self, signals: Mapping[str, torch.Tensor], neutral: Collection[str] = ()
    ) -> torch.Tensor | None:
        """The rank of every utterance of a batch, [batch] int64, from its signals
        ``name -> [batch]``: the fixed ``rank`` if one was given, else the router's, else
        the adapter's default rank (r_max); None without an adapter (the base model).

        ``neutral``: signals that were not computed (e.g. the proxy in streaming); those of
        them that the router reads get its ``neutral_value`` instead of a missing-signal error.
        """
        if self.router is None:
            return None
        n = batch_size(signals)
        filled = dict(signals)
        for name in set(neutral) & set(self.router.signal_names) - set(signals):
            filled[name] = torch.full((n,), self.router.neutral_value(name), dtype=torch.float32)
        return self.router(filled)

    def signals(self, audios: Sequence[np.ndarray], batch: dict[str, torch.Tensor]) -> dict[str, list[float]]:
        """Audio signals (duration, snr_db, speech_activity) of every clip, plus the proxy
        signals when the router needs them (Whisper only): ``signals.live``."""
        from flexispeech.signals.live import live_signals

        return live_signals(
            audios,
            batch,
            self.needed_signals(),
            self.family.name,
            self.model,
            self.processor,
            self.max_new_tokens,
        )

    def transcribe(
        self, audios: Sequence[np.ndarray], ids: Sequence[str] | None = None
    ) -> list[Transcription]:
        """Transcribe 16 kHz mono float32 clips [T] (one batch per ``batch_size`` clips)."""
        ids = list(ids) if ids is not None else [str(i) for i in range(len(audios))]
        results: list[Transcription] = []
        for start in range(0, len(audios), self.batch_size):
            chunk = [np.asarray(a, dtype=np.float32) for a in audios[start : start + self.batch_size]]
            results += self._batch(chunk, ids[start : start + self.batch_size])
        return results

    def _batch(self, audios: list[np.ndarray], ids: list[str]) -> list[Transcription]:
        examples = [Example(id=i, text="", audio=a) for i, a in zip(ids, audios)]
        batch = self.family.collate(self.processor, examples, train=False)
        kwargs: dict[str, Any] = {"num_beams": self.num_beams}
        if self.max_new_tokens is not None:
            kwargs["max_new_tokens"] = self.max_new_tokens
        notes: list[dict[str, Any]] = [{} for _ in audios]
        picks: list[dict[str, Any]] = [{} for _ in audios]
        from flexispeech.signals.live import runs_model  # as in ``signals``: loaded on first use

        second = bool(self.joint) or self.fallback is not None or runs_model(self.needed_signals())
        # One encoder pass per clip and rank for the signals' base passes and the decodings.
        with second_passes(self.model, self.family, second):
            signals = self.signals(audios, batch)
            ranks = self.ranks_for({k: torch.tensor(v, dtype=torch.float32) for k, v in signals.items()})
            again = ranks is not None and bool(self.joint or self.fallback is not None)
            served = None if ranks is None else ranks.tolist()
            if ranks is None:
                texts = self.family.generate(self.model, self.processor, batch, **kwargs)
            else:
                with use_ranks(self.model, ranks):
                    texts = self.family.generate(self.model, self.processor, batch, **kwargs)
            if again:
                decode_rows = row_decoder(
                    self.model, self.family, self.processor, batch, self.num_beams, self.max_new_tokens
                )
                if self.joint:  # as eval: the joint pick first, the loop fallback on what it picked
                    scorer = row_scorer(self.model, self.family, self.processor, batch)
                    texts, served, picks = decode_joint(
                        texts, served, self.joint, decode_rows, scorer, self.normalize, self.joint_weights
                    )
                if self.fallback is not None:
                    texts, notes = decode_with_fallback(texts, served, self.fallback, decode_rows)
        return [
            Transcription(
                id=i,
                text=t,
                rank=None if served is None else served[n],
                duration=len(a) / SAMPLE_RATE,
                signals={k: float(v[n]) for k, v in signals.items()},
                fallback=notes[n],
                joint=picks[n],
            )
            for n, (i, t, a) in enumerate(zip(ids, texts, audios))
        ]

    def transcribe_long(self, path: str | Path) -> Transcription:
        """Transcribe a file longer than ``long_block_s`` block by block.

        Each block is cut at its quietest 100 ms in its last ``CUT_SEARCH_S`` seconds (the
        rest is carried into the next block), routed and decoded on its own; the texts are
        joined. The result's rank is the most frequent block rank, its signals the
        duration-weighted means over blocks.
        """
        block_n = int(self.long_block_s * SAMPLE_RATE)
        texts: list[str] = []
        parts: list[Transcription] = []
        carry = np.zeros(0, dtype=np.float32)
        blocks = iter_audio_blocks(path, block_s=self.long_block_s)
        exhausted = False
        while not exhausted or carry.size:
            while carry.size < block_n and not exhausted:
                block = next(blocks, None)
                if block is None:
                    exhausted = True
                else:
                    carry = np.concatenate([carry, block])
            if carry.size == 0:
                break
            cut = carry.size if exhausted and carry.size <= block_n else quiet_cut(carry[:block_n])
            piece, carry = carry[:cut], carry[cut:]
            result = self.transcribe([piece], [str(path)])[0]
            parts.append(result)
            if result.text.strip():
                texts.append(result.text.strip())
        total = sum(p.duration for p in parts)
        ranks = [p.rank for p in parts if p.rank is not None]
        signals = {k: sum(p.signals[k] * p.duration for p in parts) / total for k in parts[0].signals}
        signals["duration"] = total
        rank = max(set(ranks), key=ranks.count) if ranks else None
        flagged = [p.fallback for p in parts if p.fallback]
        fallback = (
            {
                "rank": flagged[0]["rank"],
                "blocks": len(flagged),
                "kept": sum(bool(f["kept"]) for f in flagged),
            }
            if flagged
            else {}
        )
        picked = [p.joint for p in parts if p.joint]
        joint = (
            {
                "blocks_scored": sum("scores" in j for j in picked),
                "blocks_moved": sum(j["picked"] != j["routed_rank"] for j in picked),
            }
            if picked
            else {}
        )
        return Transcription(
            id=str(path),
            text=" ".join(texts),
            rank=rank,
            duration=total,
            signals=signals,
            fallback=fallback,
            joint=joint,
        )

    def transcribe_files(self, paths: Sequence[str | Path]) -> Iterator[Transcription | AudioError]:
        """Per path, in order, a ``Transcription`` or the ``AudioError`` that stopped it
        (a bad file does not stop the others). Audio is read in batches; a file longer than
        ``long_block_s`` is read and decoded block by block (``transcribe_long``)."""
        from tqdm import tqdm

        paths = list(paths)
        with tqdm(total=len(paths), unit="file", disable=None, leave=False) as bar:
            for start in range(0, len(paths), self.batch_size):
                group = paths[start : start + self.batch_size]
                loaded: list[np.ndarray | AudioError | Path] = []
                for p in group:
                    try:
                        if audio_duration(p) > self.long_block_s:
                            loaded.append(Path(p))  # decoded later, block by block
                        else:
                            loaded.append(check_samples(load_audio(p), p))
                    except AudioError as err:
                        loaded.append(err)
                    except FlexispeechError as err:
                        loaded.append(AudioError(p, str(err)))
                good = [(str(p), a) for p, a in zip(group, loaded) if isinstance(a, np.ndarray)]
                done = iter(self.transcribe([a for _, a in good], [p for p, _ in good]) if good else [])
                for item in loaded:
                    if isinstance(item, Path):
                        try:
                            yield self.transcribe_long(item)
                        except AudioError as err:  # corrupt past the header: found mid-file
                            yield err
                    else:
                        yield item if isinstance(item, AudioError) else next(done)
                bar.update(len(group))


def quiet_cut(samples: np.ndarray) -> int:
    """Index in ``samples`` [T] to cut a block at: the middle of the quietest 100 ms window
    in the last ``CUT_SEARCH_S`` seconds (so a cut falls in a pause, not in a word)."""
    win = SAMPLE_RATE // 10
    start = max(0, samples.size - int(CUT_SEARCH_S * SAMPLE_RATE))
    tail = samples[start:].astype(np.float64)
    if tail.size <= win:
        return samples.size
    energy = np.convolve(tail**2, np.ones(win), mode="valid")  # [len(tail) - win + 1]
    return start + int(np.argmin(energy)) + win // 2
