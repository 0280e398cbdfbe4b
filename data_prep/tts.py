"""Offline text-to-speech voices: which engines are installed, and text -> 16 kHz samples.

Engines (each optional; a missing one is skipped with a warning by the corpus builder):
espeak-ng (formant), espeak-ng + MBROLA diphones (native and German-accented English),
flite, festival (one persistent ``festival --pipe`` process per worker: starting festival
costs ~0.3 s, more than most utterances), SVOX pico (``pico2wave``) and the neural
``hibari`` voice (PyPI ``hibari-tts``). All are deterministic: the same text, voice and
settings give the same samples, which makes a corpus build reproducible.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from data_prep.system_root import system_path
from flexispeech.audio import SAMPLE_RATE, check_samples, to_mono
from flexispeech.errors import FlexispeechError

# Where Debian's mbrola-* and festvox-* voice packages install (under FLEXISPEECH_SYSTEM_ROOT).
MBROLA_DIR = "/usr/share/mbrola"
FESTIVAL_VOICE_DIR = "/usr/share/festival/voices"


@dataclass(frozen=True)
class Voice:
    """A speaker: ``engine`` + ``name``; ``unseen`` voices appear only in the test split."""

    engine: str  # espeak | mbrola | mbrola_accented | flite | festival | pico | hibari
    name: str  # the engine's voice id, e.g. "en-us+f2", "mb-us1", "slt", "heart"
    unseen: bool = False

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"


# Share of utterances per engine (renormalised over the engines installed); voices whose
# name is in UNSEEN are held out for the test split.
ENGINE_SHARES = {
    "espeak": 22,
    "flite": 21,
    "mbrola": 17,
    "hibari": 10,
    "pico": 9,
    "festival": 9,
    "mbrola_accented": 6,
}
ESPEAK_ACCENTS = [
    "en-us",
    "en-gb",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
    "en-gb-scotland",
    "en-029",
]
ESPEAK_VARIANTS = [
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
]
UNSEEN = {
    "espeak": {"en-gb-scotland", "en-029"},
    "mbrola": {"mb-us3"},
    "mbrola_accented": {"mb-de5-en"},
    "flite": {"rms"},
    "festival": {"ked_diphone"},
    "pico": {"en-GB"},
    "hibari": set(),
}
MBROLA_VOICES = {
    "mbrola": ["mb-us1", "mb-us2", "mb-us3", "mb-en1"],
    "mbrola_accented": ["mb-de2-en", "mb-de4-en", "mb-de5-en"],
}
FLITE_VOICES = ["kal", "kal16", "awb", "slt", "rms"]
FESTIVAL_VOICES = ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"]
PICO_VOICES = ["en-US", "en-GB"]


def _mbrola_db(name: str) -> str:
    """'mb-de2-en' -> 'de2': the MBROLA database a voice needs."""
    return name.split("-")[1]


def _catalogue() -> dict[str, list[str]]:
    """Every voice name this version knows, per engine, in the order corpora draw from:
    a corpus' plan (``synthetic.make_plan``) depends on that order."""
    return {
        "espeak": [f"{a}+{v}" for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS],
        **MBROLA_VOICES,
        "flite": FLITE_VOICES,
        "festival": FESTIVAL_VOICES,
        "pico": PICO_VOICES,
        "hibari": ["heart"],
    }


def _voices(keep: Callable[[str, str], bool]) -> dict[str, list[Voice]]:
    """The catalogue's voices for which ``keep(engine, name)`` holds, per engine (engines
    left with none are absent)."""
    out = {
        engine: [Voice(engine, n, n.split("+")[0] in UNSEEN[engine]) for n in names if keep(engine, n)]
        for engine, names in _catalogue().items()
    }
    return {engine: voices for engine, voices in out.items() if voices}


def voices_named(ids: set[str]) -> dict[str, list[Voice]]:
    """The voices with these ids (``engine:name``), per engine, in the order
    ``installed_voices`` lists them: this replays the plan of a corpus from the voice ids in
    its corpus.json, on a machine without its engines."""
    out = _voices(lambda engine, name: f"{engine}:{name}" in ids)
    unknown = ids - {v.id for vs in out.values() for v in vs}
    if unknown:
        raise FlexispeechError(f"voices this version does not know: {sorted(unknown)[:5]}")
    return out


def installed_voices() -> dict[str, list[Voice]]:
    """Voices per installed engine (engines with no usable voice are absent)."""
    mbrola_dir, festival_voice_dir = system_path(MBROLA_DIR), system_path(FESTIVAL_VOICE_DIR)
    espeak = bool(shutil.which("espeak-ng"))
    mbrola = espeak and bool(shutil.which("mbrola"))  # MBROLA voices are driven through espeak-ng
    engines = {
        "espeak": espeak,
        "mbrola": mbrola,
        "mbrola_accented": mbrola,
        "flite": bool(shutil.which("flite")),
        "festival": bool(shutil.which("festival")),
        "pico": bool(shutil.which("pico2wave")),
        "hibari": bool(importlib.util.find_spec("hibari") and importlib.util.find_spec("onnxruntime")),
    }

    def usable(engine: str, name: str) -> bool:
        if not engines[engine]:
            return False
        if engine.startswith("mbrola"):
            return (mbrola_dir / _mbrola_db(name)).exists()
        if engine == "festival":
            return bool(list(festival_voice_dir.glob(f"*/{name}")))
        return True

    return _voices(usable)


def to_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Resample ``samples`` [T] to 16 kHz with a polyphase filter.

    scipy rather than librosa/soxr here: each worker process would pay librosa's ~1-3 s
    import, which dominates the build of a tiny corpus; TTS rates are simple ratios.
    """
    if sample_rate == SAMPLE_RATE:
        return samples.astype(np.float32)
    g = math.gcd(SAMPLE_RATE, sample_rate)
    return resample_poly(samples, SAMPLE_RATE // g, sample_rate // g).astype(np.float32)


class Synthesizer:
    """Text -> mono float32 samples [T] at 16 kHz, for any installed :class:`Voice`.

    Holds per-process state (a festival process, the hibari model, a temp dir): make one
    per worker process and :meth:`close` it at the end.
    """

    def __init__(self, work_dir: Path | None = None) -> None:
        if work_dir is not None:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="tts-", dir=work_dir))
        self._festival: subprocess.Popen | None = None
        self._hibari = None

    def __call__(self, voice: Voice, text: str, rate: float = 1.0, pitch: float = 0.0) -> np.ndarray:
        """Speak ``text``; ``rate`` > 1 is faster, ``pitch`` in [-1, 1] shifts it (where supported).

        Returns:
            samples [T], float32 at 16 kHz.
        """
        if voice.engine == "hibari":
            return self._hibari_say(text, rate)
        wav = self._tmp / "say.wav"
        wav.unlink(missing_ok=True)
        if voice.engine in ("espeak", "mbrola", "mbrola_accented"):
            cmd = [
                "espeak-ng",
                "-v",
                voice.name,
                "-s",
                str(int(round(170 * rate))),
                "-p",
                str(int(round(50 + 20 * pitch))),
                "-w",
                str(wav),
                text,
            ]
            self._run(cmd, voice)
        elif voice.engine == "flite":
            cmd = [
                "flite",
                "-voice",
                voice.name,
                "--setf",
                f"duration_stretch={1 / rate:.3f}",
                "--setf",
                f"int_f0_target_mean={110 * 2 ** (pitch / 3) if voice.name != 'slt' else 170 * 2 ** (pitch / 3):.1f}",
                "-t",
                text,
                "-o",
                str(wav),
            ]
            self._run(cmd, voice)
        elif voice.engine == "pico":
            self._run(["pico2wave", "-l", voice.name, "-w", str(wav), text], voice)
        elif voice.engine == "festival":
            self._festival_say(voice.name, text, rate, wav)
        else:
            raise FlexispeechError(f"unknown TTS engine {voice.engine!r}")
        samples, sr = sf.read(str(wav), dtype="float32", always_2d=False)
        samples = check_samples(to_mono(samples), wav)
        if voice.engine == "pico" and rate != 1.0:  # pico2wave has no rate option: resample
            sr = int(round(sr * rate))
        return to_16k(samples, sr)

    def _run(self, cmd: list[str], voice: Voice) -> None:
        proc = subprocess.run(cmd, capture_output=True, timeout=120)
        if proc.returncode != 0:
            raise FlexispeechError(
                f"{voice.id}: {cmd[0]} failed ({proc.stderr.decode(errors='replace').strip()[:200]})"
            )

    def _festival_say(self, name: str, text: str, rate: float, wav: Path) -> None:
        if self._festival is None:
            self._festival = subprocess.Popen(
                ["festival", "--pipe"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
        quoted = text.replace("\\", " ").replace('"', '\\"')
        # festival buffers its own stdout, so completion is signalled by a shell echo.
        cmd = (
            f"(voice_{name})(Parameter.set 'Duration_Stretch {1 / rate:.3f})"
            f'(utt.save.wave (utt.synth (Utterance Text "{quoted}")) "{wav}" \'riff)'
            '(system "echo FLEXISPEECH_DONE")\n'
        )
        assert self._festival.stdin and self._festival.stdout
        self._festival.stdin.write(cmd)
        self._festival.stdin.flush()
        while True:
            line = self._festival.stdout.readline()
            if not line:
                self._festival = None
                raise FlexispeechError(f"festival:{name}: the festival process exited")
            if "FLEXISPEECH_DONE" in line:
                return

    def _hibari_say(self, text: str, rate: float) -> np.ndarray:
        if self._hibari is None:
            from hibari import Hibari

            self._hibari = Hibari(threads=1)
        audio = self._hibari(text, speed=rate, seed=0)
        return to_16k(np.asarray(audio, np.float32), self._hibari.sample_rate)

    def close(self) -> None:
        if self._festival is not None and self._festival.stdin:
            self._festival.stdin.close()
            self._festival.wait(timeout=10)
        shutil.rmtree(self._tmp, ignore_errors=True)
