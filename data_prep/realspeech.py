"""Real human English speech that registry packages install, as a test-only corpus.

Every other corpus the project can build offline is synthetic (text-to-speech voices). This
one gathers recordings of real people, with reference transcripts the packages ship
themselves, from Debian packages that apt installs (the project installs nothing here;
``data_prep/install_system_deps.sh`` or ``apt-get install`` does):

* ``asterisk``: the Asterisk PBX core prompts recorded by Allison Smith (one US English
  female voice actor, studio recordings of telephone prompts at 8 kHz), packages
  ``asterisk-core-sounds-en-wav`` (the audio) and ``asterisk-core-sounds-en`` (the prompt
  list ``core-sounds-en.txt``, ``name: text`` lines), CC-BY-SA-3.0. Annotations in the list
  (``[...]``, ``(...)``, ``<...>``) are removed; entries that are only an annotation (tones,
  silence) are skipped as non-speech, and entries with ``*`` or ``#`` are skipped because how
  the symbol is spoken ("star", "pound"?) is not written down.
* ``pocketsphinx``: the test recordings of CMU PocketSphinx, package
  ``pocketsphinx-testdata`` (BSD-2 per its Debian copyright): five LibriVox sentences of
  *Sense and Sensibility* (one reader) and five playing-card commands with the
  ``<s> text </s> (id)`` transcripts beside them, and ``goforward.raw`` (16 kHz 16-bit
  little-endian PCM, no header) whose transcript, "go forward ten meters", is the one
  PocketSphinx's own decoder tests assert.

All rows are in the ``test`` split. Extra columns: ``source`` (asterisk | pocketsphinx),
``licence``, ``package`` (the Debian package holding the audio), ``category`` (asterisk:
the prompt folder, ``prompts`` for the top level: digits, letters, phonetic, ...;
pocketsphinx: librivox, cards, goforward), ``gender`` ("F" or "" when unknown) and
``sample_rate`` (of the recording) and ``channel`` (``telephone`` for 8-kHz recordings,
else ``wideband``, as the synthetic corpus names its channels). Audio is hard-linked (or
copied) into ``out/audio/<source>/...``; the raw PCM file is written as WAV.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from data_prep.folder import audio_duration, is_complete, link_or_copy, report_skipped
from data_prep.system_root import system_root
from flexispeech.data.corpus import write_corpus
from flexispeech.data.speech import channel_for_rate
from flexispeech.errors import FlexispeechError

log = logging.getLogger(__name__)

ASTERISK_AUDIO = Path("usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_LIST = Path("usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
POCKETSPHINX_DATA = Path("usr/share/pocketsphinx/test/data")
# goforward.raw: headerless PCM in PocketSphinx's default input format (16 kHz, 16-bit, mono, LE)
RAW_SAMPLE_RATE = 16_000
# The transcript PocketSphinx's decoder tests assert for goforward.raw (test_decoder.py, test_fsg.c)
GOFORWARD_TEXT = "go forward ten meters"
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")  # [tones], (10 seconds of silence), <beep>
_UNSPOKEN_SYMBOLS = ("*", "#")  # "press * to ..." is read aloud as a word the list does not give
_SPHINX_LINE = re.compile(r"^\s*(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\(([^()]+)\)\s*$")  # <s> text </s> (id)


@dataclass(frozen=True)
class Entry:
    """One utterance a source offers: its id within the source, audio file, reference text."""

    key: str  # e.g. "digits/1" or "librivox/sense_and_sensibility_01_austen_64kb-0870"
    audio: Path
    text: str
    category: str


@dataclass(frozen=True)
class Source:
    """A set of real recordings that one or more Debian packages install."""

    name: str  # the corpus's ``source`` column and the audio folder
    packages: tuple[str, ...]  # Debian packages that must be installed (audio first)
    required: tuple[Path, ...]  # per package, in the same order: a path (under the prefix) it installs
    licence: str
    speaker: Callable[[Entry], str]  # speaker id of an entry
    gender: Callable[[Entry], str]
    read: Callable[[Path], tuple[list[Entry], dict[str, list[str]]]]  # prefix -> entries, skipped keys


def clean_prompt_text(text: str) -> str | None:
    """A prompt list text without annotations; None if nothing spoken is left or a symbol
    whose spoken form is unknown remains.

    >>> clean_prompt_text("at [@]"), clean_prompt_text("[ascending tones]"), clean_prompt_text("press * now")
    ('at', None, None)
    """
    text = " ".join(_ANNOTATION.sub(" ", text).split())
    if not re.search(r"[A-Za-z0-9]", text) or any(s in text for s in _UNSPOKEN_SYMBOLS):
        return None
    return text


def read_asterisk(prefix: Path) -> tuple[list[Entry], dict[str, list[str]]]:
    """Entries of the Asterisk prompt list whose audio file exists under ``prefix``."""
    audio_root, listing = prefix / ASTERISK_AUDIO, prefix / ASTERISK_LIST
    entries, skipped = [], {"non-speech": [], "spoken-symbol": [], "missing": []}
    for lineno, line in enumerate(gzip.open(listing, "rt", encoding="utf-8").read().splitlines(), 1):
        if not line.strip() or line.startswith(";"):
            continue
        key, sep, raw = line.partition(":")
        if not sep or not key.strip():
            raise FlexispeechError(f"{listing}:{lineno}: expected 'name: text', got {line[:60]!r}")
        key = key.strip()
        text = clean_prompt_text(raw)
        if text is None:
            stripped = " ".join(_ANNOTATION.sub(" ", raw).split())
            skipped["spoken-symbol" if re.search(r"[A-Za-z0-9]", stripped) else "non-speech"].append(key)
            continue
        audio = audio_root / f"{key}.wav"
        if not audio.is_file():
            skipped["missing"].append(key)
            continue
        category = key.split("/")[0] if "/" in key else "prompts"
        entries.append(Entry(key=key, audio=audio, text=text, category=category))
    return entries, skipped


def read_sphinx_transcription(path: Path) -> dict[str, str]:
    """utterance id -> text from a Sphinx ``<s> text </s> (id)`` transcription file."""
    texts = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = _SPHINX_LINE.match(line)
        if match is None or not match.group(1):
            raise FlexispeechError(f"{path}:{lineno}: expected '<s> text </s> (id)', got {line[:60]!r}")
        texts[match.group(2).strip()] = " ".join(match.group(1).split())
    return texts


def read_pocketsphinx(prefix: Path) -> tuple[list[Entry], dict[str, list[str]]]:
    """The PocketSphinx test recordings under ``prefix`` that have a transcript."""
    root = prefix / POCKETSPHINX_DATA
    entries, skipped = [], {"missing": []}
    for folder, transcription in (("librivox", "transcription"), ("cards", "cards.transcription")):
        path = root / folder / transcription
        if not path.is_file():
            skipped["missing"].append(f"{folder}/{transcription}")
            continue
        for utt, text in read_sphinx_transcription(path).items():
            audio = root / folder / f"{utt}.wav"
            if audio.is_file():
                entries.append(Entry(key=f"{folder}/{utt}", audio=audio, text=text, category=folder))
            else:
                skipped["missing"].append(f"{folder}/{utt}")
    goforward = root / "goforward.raw"
    if goforward.is_file():
        entries.append(Entry(key="goforward", audio=goforward, text=GOFORWARD_TEXT, category="goforward"))
    else:
        skipped["missing"].append("goforward")
    return entries, skipped


SOURCES: dict[str, Source] = {
    "asterisk": Source(
        name="asterisk",
        packages=("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en"),
        required=(ASTERISK_AUDIO, ASTERISK_LIST),
        licence="CC-BY-SA-3.0 (Allison Smith / Digium)",
        speaker=lambda e: "asterisk-allison",
        gender=lambda e: "F",
        read=read_asterisk,
    ),
    "pocketsphinx": Source(
        name="pocketsphinx",
        packages=("pocketsphinx-testdata",),
        required=(POCKETSPHINX_DATA,),
        licence="BSD-2 (CMU; librivox clips from LibriVox, public domain)",
        # one reader per folder; who they are is not recorded
        speaker=lambda e: f"pocketsphinx-{e.category}",
        gender=lambda e: "",
        read=read_pocketsphinx,
    ),
}


def missing_packages(source: Source, prefix: Path) -> list[str]:
    """The packages of ``source`` whose files are absent under ``prefix`` (empty: usable)."""
    return [pkg for pkg, path in zip(source.packages, source.required) if not (prefix / path).exists()]


def install_hint(packages: Sequence[str]) -> str:
    """How to install ``packages``, for messages."""
    return (
        f"install with `apt-get install {' '.join(packages)}` (Debian/Ubuntu, as root) or "
        "`sh data_prep/install_system_deps.sh`"
    )


def _place_audio(entry: Entry, dst: Path) -> None:
    """Link a WAV file into the corpus, or write headerless PCM as a 16-bit WAV."""
    if entry.audio.suffix == ".raw":
        import soundfile as sf

        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            audio, _ = sf.read(
                str(entry.audio),
                samplerate=RAW_SAMPLE_RATE,
                channels=1,
                subtype="PCM_16",
                endian="LITTLE",
                format="RAW",
                dtype="int16",
            )
            tmp = dst.with_name(f".{dst.name}.tmp")
            sf.write(str(tmp), audio, RAW_SAMPLE_RATE, subtype="PCM_16", format="WAV")
            tmp.replace(dst)
        return
    link_or_copy(entry.audio, dst)


def prepare_realspeech(
    out: Path,
    sources: list[str] | None = None,
    *,
    prefix: Path | None = None,
    force: bool = False,
) -> Path:
    """Import the real English recordings that Debian packages installed, as a ``test`` split.

    Args:
        out: the corpus directory to write
        sources: which sources to import (asterisk, pocketsphinx; default: every installed one)
        prefix: the root the packages are installed under (default: $FLEXISPEECH_SYSTEM_ROOT, else /)
        force: rebuild even if ``out`` holds a complete corpus

    A source whose packages are not installed is left out with a one-line warning naming the
    packages and how to install them (``corpus.json`` info ``sources_missing``); one asked for
    by name must be installed. Safe to re-run: a complete corpus built from the same sources
    is kept unless ``force`` (installing a missing package changes the sources, so the next
    run rebuilds).

    Returns:
        ``out``.

    Raises:
        FlexispeechError: no source installed (or a named one missing; the message says which
            packages to install), an unknown source, a malformed transcript line, or no
            readable utterance.
    """
    out = Path(out)
    prefix = Path(prefix) if prefix is not None else system_root()  # read now: not at import
    unknown = [s for s in sources or [] if s not in SOURCES]
    if unknown:
        raise FlexispeechError(f"unknown realspeech sources {unknown}; known: {', '.join(SOURCES)}")
    wanted = [SOURCES[s] for s in (sources or SOURCES)]
    missing = {s.name: missing_packages(s, prefix) for s in wanted}
    present = [s for s in wanted if not missing[s.name]]
    absent = sorted({p for s in wanted for p in missing[s.name]})
    if not present or (sources and absent):
        raise FlexispeechError(
            f"realspeech: packages not installed: {' '.join(absent)}; {install_hint(absent)}"
        )
    if absent:
        log.warning(
            "realspeech: skipping sources %s (packages not installed: %s); %s",
            ", ".join(n for n, m in missing.items() if m),
            " ".join(absent),
            install_hint(absent),
        )
    info = {
        "importer": "realspeech",
        "prefix": str(prefix.resolve()),
        "sources": [s.name for s in present],
        "sources_missing": [n for n, m in missing.items() if m],
    }
    if not force and is_complete(out, info):
        return out

    import soundfile as sf

    rows, skipped_counts = [], {}
    for source in present:
        entries, skipped = source.read(prefix)
        skipped = {**skipped, "unreadable": []}
        for entry in entries:
            rel = Path("audio") / source.name / f"{entry.key}.wav"  # keys may hold dots: no with_suffix
            _place_audio(entry, out / rel)
            duration = audio_duration(out / rel)
            if duration is None:
                skipped["unreadable"].append(entry.key)
                (out / rel).unlink()
                continue
            rows.append(
                {
                    "id": f"{source.name}/{entry.key}",
                    "audio": rel.as_posix(),
                    "text": entry.text,
                    "duration": duration,
                    "speaker": source.speaker(entry),
                    "split": "test",
                    "source": source.name,
                    "licence": source.licence,
                    "package": source.packages[0],
                    "category": entry.category,
                    "gender": source.gender(entry),
                    "sample_rate": (rate := sf.info(str(out / rel)).samplerate),
                    "channel": channel_for_rate(rate),
                }
            )
        report_skipped(skipped, prefix / source.required[0])
        skipped_counts[source.name] = {k: len(v) for k, v in skipped.items()}
    if not rows:
        raise FlexispeechError(f"{prefix}: the installed realspeech packages hold no readable utterance")
    info["skipped"] = skipped_counts  # counts, not options: is_complete ignores them
    return write_corpus(rows, out, name="realspeech", info=info)
