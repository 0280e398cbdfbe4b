"""Import any folder of audio files with a transcript file as a corpus.

Transcripts come either from ``metadata.csv`` with a header holding ``file_name`` and
``transcription`` (or ``text``/``sentence``), as Hugging Face's audiofolder uses, optionally
with a ``speaker`` column; or from a text file of ``<key><TAB or |><text>`` lines, where the
key is the audio file's path relative to the folder or just its stem (LJSpeech's
``id|text|normalized text`` lines use the normalized text). Without a speaker column the
speaker is the audio file's parent folder ("" for files at the top).

Splits are assigned by a hash of the utterance id, so the assignment is deterministic and
does not change when other files are added or removed. Audio is hard-linked into
``out/audio`` (copied across file systems) so the corpus is self-contained and relocatable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from flexispeech.data.corpus import is_corpus, read_corpus_info, write_corpus
from flexispeech.errors import FlexispeechError

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")  # what soundfile decodes
_TEXT_COLUMNS = ("transcription", "text", "sentence")


def link_or_copy(src: Path, dst: Path) -> None:
    """Place ``src`` at ``dst``: a hard link (no extra disk) or, across file systems, a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if dst.stat().st_size == src.stat().st_size:
            return  # from an interrupted earlier run
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def audio_duration(path: Path) -> float | None:
    """Duration in seconds from the file header, or None if soundfile cannot read it."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    return info.duration if info.frames > 0 and info.samplerate > 0 else None


def read_text(path: Path) -> str:
    """The UTF-8 text of a transcript, metadata or task file; a ``FlexispeechError`` naming it
    when it is not UTF-8 (a file saved as UTF-16 or Latin-1 is the input's fault, not a bug)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise FlexispeechError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None


def hash_split(utt_id: str, validation_fraction: float, test_fraction: float) -> str:
    """'train', 'validation' or 'test' from a stable hash of ``utt_id`` (sha1, not ``hash()``,
    which is salted per process)."""
    u = int.from_bytes(hashlib.sha1(utt_id.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def _read_metadata_csv(path: Path, text: str) -> list[dict[str, str]]:
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        text_col = next((c for c in _TEXT_COLUMNS if c in fields), None)
        if "file_name" not in fields or text_col is None:
            raise FlexispeechError(
                f"{path}: a metadata.csv needs a header with 'file_name' and one of "
                f"{', '.join(_TEXT_COLUMNS)}; found {fields}"
            )
        return [{"key": r["file_name"], "text": r[text_col], "speaker": r.get("speaker")} for r in reader]


def _read_lines(path: Path, text: str) -> list[dict[str, str]]:
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        sep = "\t" if "\t" in line else "|"
        fields = line.split(sep)
        if len(fields) < 2:
            raise FlexispeechError(f"{path}:{lineno}: expected '<file><TAB or |><text>', got {line[:60]!r}")
        # LJSpeech: id|raw text|normalized text -> the normalized text (numbers spelled out)
        text = fields[2] if sep == "|" and len(fields) == 3 else sep.join(fields[1:])
        entries.append({"key": fields[0].strip(), "text": text.strip(), "speaker": None})
    return entries


def read_transcripts(path: Path) -> list[dict[str, str]]:
    """Entries ``{key, text, speaker}`` from a metadata.csv (with header) or a key/text file."""
    if not path.is_file():
        raise FlexispeechError(f"{path}: transcript file not found")
    text = read_text(path)
    if path.suffix == ".csv" and "file_name" in text.split("\n", 1)[0]:
        return _read_metadata_csv(path, text)
    return _read_lines(path, text)


def prepare_folder(
    src: Path,
    out: Path,
    transcripts: Path | None = None,
    *,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.05,
    name: str | None = None,
    force: bool = False,
) -> Path:
    """Import the audio under ``src`` listed in ``transcripts`` (default ``src/metadata.csv``).

    Args:
        src: the folder of audio files
        out: the corpus directory to write
        transcripts: a metadata.csv (file_name,transcription) or "path<TAB or |>text" lines
        validation_fraction: share of utterances in the validation split (by hash of the id)
        test_fraction: share of utterances in the test split (by hash of the id)
        name: the corpus name in corpus.json (default: the folder's name)
        force: rebuild even if ``out`` holds a complete corpus

    Transcript entries whose audio is missing or unreadable are skipped and counted
    (``corpus.json`` info ``skipped``); audio without a transcript is ignored.
    Safe to re-run: a complete corpus in ``out`` is kept unless ``force``.

    Returns:
        ``out``.

    Raises:
        FlexispeechError: ``src`` is not a directory, no transcript file, a malformed
            transcript, a stem that names two audio files, or no usable utterance.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FlexispeechError(f"{src}: not a directory of audio files")
    if not 0 <= validation_fraction + test_fraction < 1 or min(validation_fraction, test_fraction) < 0:
        raise FlexispeechError(
            f"validation_fraction={validation_fraction}, test_fraction={test_fraction}: each must be "
            ">= 0 and together < 1"
        )
    transcripts = Path(transcripts) if transcripts else src / "metadata.csv"
    if not transcripts.is_file():
        raise FlexispeechError(
            f"{transcripts}: no transcript file; pass one (metadata.csv with file_name,transcription "
            "or '<file><TAB or |><text>' lines)"
        )
    info = {
        "importer": "folder",
        "source": str(src.resolve()),
        "transcripts": str(transcripts.resolve()),
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
    }
    if not force and is_complete(out, info):
        return out

    entries = read_transcripts(transcripts)
    by_stem: dict[str, list[Path]] = {}
    for path in src.rglob("*"):
        if path.suffix.lower() in AUDIO_SUFFIXES and out.resolve() not in path.resolve().parents:
            by_stem.setdefault(path.stem, []).append(path)

    rows, skipped = [], {"missing": [], "unreadable": []}
    for entry in tqdm(entries, desc=f"import {src.name}", unit="utt"):
        key = entry["key"]
        path = src / key
        if not path.is_file():
            matches = by_stem.get(Path(key).stem if Path(key).suffix.lower() in AUDIO_SUFFIXES else key, [])
            if len(matches) > 1:
                raise FlexispeechError(
                    f"{transcripts}: '{key}' matches several audio files ({', '.join(map(str, matches[:3]))}); "
                    "use paths relative to the folder as keys"
                )
            if not matches:
                skipped["missing"].append(key)
                continue
            path = matches[0]
        duration = audio_duration(path)
        if duration is None:
            skipped["unreadable"].append(key)
            continue
        rel = path.relative_to(src)
        utt_id = rel.with_suffix("").as_posix()
        link_or_copy(path, out / "audio" / rel)
        rows.append(
            {
                "id": utt_id,
                "audio": (Path("audio") / rel).as_posix(),
                "text": entry["text"],
                "duration": duration,
                "speaker": entry["speaker"] or (rel.parent.as_posix() if rel.parent != Path(".") else ""),
                "split": hash_split(utt_id, validation_fraction, test_fraction),
            }
        )
    report_skipped(skipped, transcripts)
    if not rows:
        raise FlexispeechError(
            f"{transcripts}: none of its {len(entries)} entries has a readable audio file under {src}"
        )
    info["skipped"] = {k: len(v) for k, v in skipped.items()}
    return write_corpus(rows, out, name=name or src.name, info=info)


def is_complete(out: Path, info: dict) -> bool:
    """Whether ``out`` holds a complete corpus built with the same options ``info``
    (the counts an import adds to its info, ``skipped``, are not options)."""
    if not is_corpus(out):
        return False
    built = dict(read_corpus_info(out).get("info", {}))
    built.pop("skipped", None)
    return built == info


def report_skipped(skipped: dict[str, Sequence[str]], source: Path) -> None:
    """Log how many entries of ``source`` were skipped and why, with a few examples."""
    for reason, keys in skipped.items():
        if keys:
            log.warning(
                "%s: skipped %d entries with %s audio (e.g. %s)",
                source,
                len(keys),
                reason,
                ", ".join(keys[:3]),
            )
