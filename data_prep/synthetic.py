"""The offline synthetic speech corpus: many TTS voices, noise at known SNRs, reverberation.

    flexispeech prepare synthetic --out DIR --size small --seed 0 --workers 2

The build is planned up front from the seed (text, voice, rate, pitch, noise type and SNR,
RT60, channel of every utterance), then each utterance is rendered by a worker into
``audio/<split>/<id>.wav`` plus a ``.json`` row, both written atomically; a re-run skips
utterances already rendered, so an interrupted build resumes. The corpus (``dataset/`` and
``corpus.json``, see :mod:`flexispeech.data.corpus`) is written last. Same seed, same corpus:
every engine is deterministic and every random draw comes from a generator seeded by
(seed, utterance index), so the audio is bit-identical whatever the number of workers.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep import acoustics
from data_prep.sentences import BUCKETS, compose, n_words, sentence_pools
from data_prep.tts import ENGINE_SHARES, Synthesizer, Voice, installed_voices
from flexispeech.atomic import write_file, write_text
from flexispeech.audio import SAMPLE_RATE
from flexispeech.data.corpus import is_corpus, read_corpus_info, write_corpus
from flexispeech.errors import FlexispeechError

MAX_CLIP_S = 29.5  # Whisper's window is 30 s; longer clips are re-synthesised faster
SNRS_DB = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0)
BABBLE_MIN_SNR_DB = 5.0  # below this the right transcript of babble noise is ambiguous
FAST_ENGINES = ("espeak", "mbrola", "pico", "flite")  # cheap voices for babble talkers


@dataclass(frozen=True)
class Size:
    utterances: int
    bucket_weights: tuple[float, ...]  # over sentences.BUCKETS
    babble_talkers: tuple[int, int]
    max_clip_s: float = MAX_CLIP_S  # longest clip; longer ones are re-synthesised faster
    test_share: float = 0.1  # half of the test split is spoken by unseen voices


# "small" is the CPU profile's corpus, heard through a 10-s encoder window: its sentences
# stop at 25 words and its clips at 9.5 s, so every test utterance is heard whole and the
# evaluation needs no filtering by length (26-70 word sentences cannot be spoken in 10 s).
SIZES = {
    "tiny": Size(24, (0.5, 0.5, 0, 0, 0), (2, 3)),  # short clips, builds in seconds (tests)
    "small": Size(600, (0.2, 0.45, 0.35, 0, 0), (6, 12), max_clip_s=9.5),
    "default": Size(3000, (0.15, 0.35, 0.3, 0.15, 0.05), (6, 12)),
    # The GPU study: 20,720 train (~7.6 s each: ~44 h), 2,800 validation, 4,480 test of
    # which 2,240 by voices never heard in training.
    "gpu": Size(28000, (0.15, 0.35, 0.3, 0.15, 0.05), (6, 12), test_share=0.16),
}


@dataclass(frozen=True)
class Plan:
    """Everything random about one utterance, drawn up front from (seed, index)."""

    id: str
    split: str
    text: str
    voice: Voice
    rate: float  # > 1 is faster
    pitch: float  # -1..1
    reverb_rt60: float  # NaN: dry
    noise_type: str  # none | white | pink | brown | babble
    snr_db: float  # NaN: clean
    channel: str  # wideband | telephone
    peak: float
    max_clip_s: float  # the size's longest clip
    babble: tuple[tuple[Voice, str], ...]  # other talkers (voice, text)


def _choose_voice(voices: dict[str, list[Voice]], unseen: bool, rng: np.random.Generator) -> Voice:
    eligible = {e: [v for v in vs if v.unseen == unseen] for e, vs in voices.items()}
    eligible = {e: vs for e, vs in eligible.items() if vs}
    engines = sorted(eligible)
    weights = np.array([ENGINE_SHARES[e] for e in engines], float)
    engine = engines[int(rng.choice(len(engines), p=weights / weights.sum()))]
    return eligible[engine][int(rng.integers(len(eligible[engine])))]


def _splits(spec: Size) -> list[str]:
    """The split of each utterance index of a corpus of ``spec``."""
    n = spec.utterances
    n_test, n_val = max(4, round(spec.test_share * n)), max(2, round(0.1 * n))
    return ["train"] * (n - n_test - n_val) + ["validation"] * n_val + ["test"] * n_test


def _draw_text(split: str, pools: dict, spec: Size, rng: np.random.Generator) -> str:
    """An utterance's text: the first draws of its generator, before any voice is chosen,
    so the texts of a corpus depend on (size, seed) alone."""
    weights = np.array(spec.bucket_weights) / sum(spec.bucket_weights)
    bucket = BUCKETS[int(rng.choice(len(BUCKETS), p=weights))]
    return compose(pools[split], bucket, rng)


def plan_texts(size: str, seed: int, splits: tuple[str, ...] = ("validation", "test")) -> dict[str, str]:
    """Utterance id -> reference text of the corpus ``prepare_synthetic(size, seed)`` builds,
    for the ``splits`` asked, without synthesising anything: what scoring stored hypotheses
    needs when the corpus itself is on another machine."""
    spec = SIZES[size]
    pools = sentence_pools(seed)
    return {
        f"syn-{split}-{i:05d}": _draw_text(split, pools, spec, np.random.default_rng([seed, i]))
        for i, split in enumerate(_splits(spec))
        if split in splits
    }


def make_plan(size: str, seed: int, voices: dict[str, list[Voice]]) -> list[Plan]:
    """The utterances of a corpus of ``size``: a pure function of (size, seed, voices)."""
    spec = SIZES[size]
    pools = sentence_pools(seed)
    has_unseen = any(v.unseen for vs in voices.values() for v in vs)
    fast = {e: vs for e, vs in voices.items() if e in FAST_ENGINES} or voices
    plans = []
    for i, split in enumerate(_splits(spec)):
        rng = np.random.default_rng([seed, i])
        text = _draw_text(split, pools, spec, rng)
        # Half of the test split is spoken by voices never heard in training.
        unseen = split == "test" and has_unseen and i % 2 == 0
        voice = _choose_voice(voices, unseen, rng)
        rt60 = float(rng.uniform(0.2, 1.0)) if rng.random() < 0.3 else math.nan
        noise, snr = "none", math.nan
        if rng.random() < 0.6:
            noise = str(rng.choice(["white", "pink", "brown", "babble"]))
            allowed = [s for s in SNRS_DB if noise != "babble" or s >= BABBLE_MIN_SNR_DB]
            snr = float(rng.choice(allowed))
        babble: tuple[tuple[Voice, str], ...] = ()
        if noise == "babble":
            k = int(rng.integers(spec.babble_talkers[0], spec.babble_talkers[1] + 1))
            babble = tuple(
                (_choose_voice(fast, False, rng), compose(pools["train"], BUCKETS[1], rng)) for _ in range(k)
            )
        plans.append(
            Plan(
                id=f"syn-{split}-{i:05d}",
                split=split,
                text=text,
                voice=voice,
                rate=round(float(rng.uniform(0.85, 1.3)), 3),
                pitch=round(float(rng.uniform(-1, 1)), 3),
                reverb_rt60=round(rt60, 3),
                noise_type=noise,
                snr_db=snr,
                channel="telephone" if rng.random() < 0.1 else "wideband",
                peak=round(float(rng.uniform(0.2, 0.9)), 3),
                max_clip_s=spec.max_clip_s,
                babble=babble,
            )
        )
    return plans


def _speak(synth: Synthesizer, plan: Plan, limit_s: float) -> np.ndarray:
    """The clean utterance, re-synthesised faster while it is longer than ``limit_s``."""
    rate = plan.rate
    for _ in range(4):
        clean = synth(plan.voice, plan.text, rate=rate, pitch=plan.pitch)
        seconds = clean.size / SAMPLE_RATE
        if seconds <= limit_s:
            return clean
        rate = rate * seconds / limit_s * 1.05
    raise FlexispeechError(f"{plan.id}: {plan.voice.id} cannot say {n_words(plan.text)} words in {limit_s} s")


def render(plan: Plan, out: Path, seed: int, synth: Synthesizer) -> dict:
    """Synthesise, degrade and write one utterance; returns its corpus row."""
    import soundfile as sf

    rel = f"audio/{plan.split}/{plan.id}.wav"
    meta = out / f"audio/{plan.split}/{plan.id}.json"
    if meta.is_file() and (out / rel).is_file():
        return json.loads(meta.read_text())
    rng = np.random.default_rng([seed, int(plan.id.rsplit("-", 1)[1]), 1])
    clean = _speak(synth, plan, plan.max_clip_s - 1.0)  # room for the silence padding
    if not math.isnan(plan.reverb_rt60):
        clean = acoustics.reverberate(clean, plan.reverb_rt60, SAMPLE_RATE, rng)
    clean = acoustics.pad_silence(acoustics.set_peak(clean, 0.5), SAMPLE_RATE, rng)
    audio = clean
    if plan.noise_type in acoustics.STATIONARY_NOISES:
        noise = acoustics.colored_noise(plan.noise_type, clean.size, rng)
        audio = acoustics.mix_at_snr(clean, noise, plan.snr_db, SAMPLE_RATE)
    elif plan.noise_type == "babble":
        talkers = [synth(v, t) for v, t in plan.babble]
        noise = acoustics.babble(talkers, clean.size, rng)
        audio = acoustics.mix_at_snr(clean, noise, plan.snr_db, SAMPLE_RATE)
    if plan.channel == "telephone":
        audio = acoustics.telephone(audio, SAMPLE_RATE)
    audio = acoustics.set_peak(audio, plan.peak)
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    write_file(out / rel, lambda tmp: sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV"))
    row = {
        "id": plan.id,
        "audio": rel,
        "text": plan.text,
        "duration": round(audio.size / SAMPLE_RATE, 4),
        "speaker": plan.voice.id,
        "split": plan.split,
        "voice": plan.voice.name,
        "engine": plan.voice.engine,
        "snr_db": plan.snr_db,
        "noise_type": plan.noise_type,
        "reverb_rt60": plan.reverb_rt60,
        "channel": plan.channel,
        "seen_voice": not plan.voice.unseen,
        "rate": plan.rate,
        "pitch": plan.pitch,
    }
    write_text(meta, json.dumps(row))  # after the audio: a row on disk means its audio is complete
    return row


# One synthesizer per worker process (festival and hibari are loaded once per process).
_WORKER: dict = {}


def _init_worker(out: Path, seed: int) -> None:
    _WORKER.update(out=out, seed=seed, synth=Synthesizer(out / ".work"))


def _render_in_worker(plan: Plan) -> dict:
    return render(plan, _WORKER["out"], _WORKER["seed"], _WORKER["synth"])


def _check_resume(out: Path, size: str, seed: int, engines: list[str]) -> None:
    """A half-built directory may only be resumed with the same size, seed and engines."""
    state = out / ".build.json"
    wanted = {"size": size, "seed": seed, "engines": engines}
    if state.is_file() and json.loads(state.read_text()) != wanted:
        raise FlexispeechError(
            f"{out}: holds a partial build with {state.read_text().strip()}, not {json.dumps(wanted)}; "
            "use another --out directory or delete this one"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_text(state, json.dumps(wanted) + "\n")


def prepare_synthetic(
    out: Path, size: str = "small", seed: int = 0, workers: int = 2, engines: list[str] | None = None
) -> Path:
    """Build (or resume, or find complete) the synthetic corpus in ``out``; returns ``out``.

    Args:
        out: the corpus directory (created; a partial build there is resumed)
        size: tiny (24 utterances, seconds), small (600), default (3000), gpu (28,000)
        seed: the same seed gives the same corpus, bit for bit
        workers: processes rendering utterances in parallel
        engines: restrict to these TTS engines (espeak, mbrola, mbrola_accented, flite,
            festival, pico, hibari); default: every installed one

    Raises:
        FlexispeechError: unknown size or engine, no TTS engine installed, or ``out`` holds
            a partial build made with other settings.
    """
    from tqdm import tqdm

    out = Path(out)
    if size not in SIZES:
        raise FlexispeechError(f"--size {size!r}: choose one of {', '.join(SIZES)}")
    if workers < 0:
        raise FlexispeechError(
            f"--workers {workers}: expected 0 or more processes (0 or 1: render in this one)"
        )
    unknown = sorted(set(engines or ()) - set(ENGINE_SHARES))
    if unknown:  # else a typo reads as "not installed", or as "no engine found" when alone
        raise FlexispeechError(
            f"--engines {' '.join(unknown)}: unknown engine; known: {', '.join(ENGINE_SHARES)}"
        )
    if is_corpus(out):
        info = read_corpus_info(out).get("info", {})
        if info.get("size") == size and info.get("seed") == seed:
            return out
        raise FlexispeechError(f"{out}: already holds a corpus built with {info}; use another --out")
    voices = installed_voices()
    if engines is not None:
        voices = {e: vs for e, vs in voices.items() if e in engines}
    if not voices:
        raise FlexispeechError("no text-to-speech engine found: install espeak-ng (make system-deps)")
    missing = sorted(set(engines or ENGINE_SHARES) - set(voices))
    if missing:
        warnings.warn(
            f"TTS engines not installed, skipped: {', '.join(missing)} (see make system-deps)", stacklevel=2
        )
    _check_resume(out, size, seed, sorted(voices))
    plans = make_plan(size, seed, voices)
    start = time.perf_counter()
    bar = tqdm(total=len(plans), desc=f"synthetic {size}", unit="utt")
    if workers <= 1:
        _init_worker(out, seed)
        rows = []
        for plan in plans:
            rows.append(_render_in_worker(plan))
            bar.update()
        _WORKER["synth"].close()
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(out, seed)) as pool:
            rows = []
            for row in pool.imap_unordered(_render_in_worker, plans, chunksize=1):
                rows.append(row)
                bar.update()
    bar.close()
    rows.sort(key=lambda r: r["id"])
    engines_used = sorted({r["engine"] for r in rows})
    info = {
        "size": size,
        "seed": seed,
        "engines": engines_used,
        "engines_missing": missing,
        "voices": sorted({r["speaker"] for r in rows}),
        "unseen_voices": sorted({r["speaker"] for r in rows if not r["seen_voice"]}),
        "build_seconds": round(time.perf_counter() - start, 1),
        "workers": workers,
    }
    write_corpus(rows, out, name="synthetic", info=info)
    shutil.rmtree(out / ".work", ignore_errors=True)
    (out / ".build.json").unlink(missing_ok=True)
    return out
