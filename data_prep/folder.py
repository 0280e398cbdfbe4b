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

from flexispeech.data.corpus import MARKER, is_corpus, read_corpus_info, write_corpus
from flexispeech.data.text_format import is_text_task, read_text_task_info
from flexispeech.errors import FlexispeechError

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")  # what soundfile decodes
_TEXT_COLUMNS = ("transcription", "text", "sentence")


def already_placed(src: Path, dst: Path) -> bool:
    """Whether ``dst`` is ``src`` as :func:`link_or_copy` placed it: the same file (a hard
    link) or a copy with the same size and modification time (``shutil.copy2`` keeps it).
    Size alone is not enough: a new source file of the same length as an old one would
    leave the old audio under the new transcript."""
    if os.path.samefile(src, dst):
        return True
    s, d = src.stat(), dst.stat()
    return s.st_size == d.st_size and s.st_mtime_ns == d.st_mtime_ns


def link_or_copy(src: Path, dst: Path) -> None:
    """Place ``src`` at ``dst``: a hard link (no extra disk) or, across file systems, a copy.
    A ``dst`` left by an interrupted earlier run is reused only if it is ``src`` as placed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_file():
        if already_placed(src, dst):
            return
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
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") would glue itself to the first header
        return Path(path).read_text(encoding="utf-8-sig")
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
        force: rebuild even if ``out`` holds a complete corpus, or other files

    Keys are paths relative to ``src`` (or absolute paths under it), or stems. Transcript
    entries whose audio is missing, unreadable or outside ``src`` are skipped and counted
    (``corpus.json`` info ``skipped``), as is an entry naming a file an earlier entry
    already named (``duplicate``: the first entry is kept). Audio that no entry lists is
    not imported; how many is logged.
    Safe to re-run: a complete corpus built with the same options is kept, and an
    interrupted import is resumed. Anything else in ``out`` (a corpus built with other
    options, other files) is an error unless ``force``, which also removes ``out/audio``.

    Returns:
        ``out``.

    Raises:
        FlexispeechError: ``src`` is not a directory, no transcript file, a malformed
            transcript, a stem that names two audio files, no usable utterance, or
            ``out`` holds other data (without ``force``).
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
    if check_out(out, info, force):
        return out

    entries = read_transcripts(transcripts)
    if force:
        clear_audio(out, src)
    by_stem: dict[str, list[Path]] = {}
    for path in src.rglob("*"):
        if path.suffix.lower() in AUDIO_SUFFIXES and out.resolve() not in path.resolve().parents:
            by_stem.setdefault(path.stem, []).append(path)

    rows, listed, ids = [], set(), set()
    skipped: dict[str, list[str]] = {"missing": [], "unreadable": [], "outside": [], "duplicate": []}
    for entry in tqdm(entries, desc=f"import {src.name}", unit="utt"):
        key = entry["key"]
        rel_key = key_path(src, key)
        if rel_key is None:  # "../x.wav" would be written outside out/audio
            skipped["outside"].append(key)
            continue
        path = src / rel_key
        if not path.is_file():
            matches = by_stem.get(
                rel_key.stem if rel_key.suffix.lower() in AUDIO_SUFFIXES else rel_key.as_posix(), []
            )
            if len(matches) > 1:
                raise FlexispeechError(
                    f"{transcripts}: '{key}' matches several audio files ({', '.join(map(str, matches[:3]))}); "
                    "use paths relative to the folder as keys"
                )
            if not matches:
                skipped["missing"].append(key)
                continue
            path = matches[0]
        listed.add(path)
        rel = path.relative_to(src)
        utt_id = rel.with_suffix("").as_posix()
        if utt_id in ids:  # listed twice (or a.wav and a.flac): the first entry wins
            skipped["duplicate"].append(key)
            continue
        duration = audio_duration(path)
        if duration is None:
            skipped["unreadable"].append(key)
            continue
        ids.add(utt_id)
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
    unlisted = sorted(p.relative_to(src).as_posix() for ps in by_stem.values() for p in ps if p not in listed)
    if unlisted:
        log.warning(
            "%s: %d audio files are not listed in %s and were not imported (e.g. %s)",
            src,
            len(unlisted),
            transcripts.name,
            ", ".join(unlisted[:3]),
        )
    if not rows:
        raise FlexispeechError(
            f"{transcripts}: none of its {len(entries)} entries has a readable audio file under {src}"
        )
    info["skipped"] = {k: len(v) for k, v in skipped.items()}
    return write_corpus(rows, out, name=name or src.name, info=info)


def key_path(src: Path, key: str) -> Path | None:
    """A transcript key as a path relative to ``src``: an absolute path under ``src`` made
    relative, ``..`` folded away; None when it points outside ``src`` (its audio would be
    placed outside ``out/audio``). Lexical, as the placing is: symlinks are not followed."""
    target = os.path.normpath(os.path.join(os.path.abspath(src), key))  # join keeps an absolute key
    for base in {os.path.abspath(src), str(src.resolve())}:  # an absolute key may name either
        rel = os.path.relpath(target, base)
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return Path(rel)
    return None


def _is_leftover(path: Path) -> bool:
    """Whether ``path`` in ``out`` is what an interrupted import leaves: its audio, its
    dataset (flexispeech.data.corpus; a saved DatasetDict, not a user's folder of that
    name), and the lock and temporaries of flexispeech.atomic."""
    if path.name.startswith(".") and ".tmp-" in path.name:
        return True
    if path.name in ("dataset", "dataset.old"):
        return path.is_dir() and (not any(path.iterdir()) or (path / "dataset_dict.json").is_file())
    return path.name in ("audio", ".swap.lock")


def check_out(out: Path, info: dict, force: bool, *, text_task: bool = False) -> bool:
    """Whether ``out`` already holds the corpus (or, with ``text_task``, the text task)
    that ``info`` describes: nothing to do. As ``prepare synthetic`` does, other data in
    ``out`` is never replaced silently.

    Raises:
        FlexispeechError: unless ``force``, ``out`` holds a complete corpus or text task
            built with other options or source, or is a non-empty folder that is neither
            that nor what an interrupted build leaves (``audio/``, ``dataset/``).
    """
    if not out.is_dir() or force:
        return False
    what = "text task" if text_task else "corpus"
    built = _built_options(out, text_task)
    if built is not None:
        if built == info:
            return True
        differ = sorted(k for k in set(built) | set(info) if built.get(k) != info.get(k))
        raise FlexispeechError(
            f"{out}: already holds a {what} built with other options or source (differs in "
            f"{', '.join(differ)}); use another --out, or --force to replace it"
        )
    foreign = sorted(p.name for p in out.iterdir() if not _is_leftover(p))
    if foreign:
        raise FlexispeechError(
            f"{out}: not empty and not a {what} (holds {', '.join(foreign[:3])}); use another --out, "
            "or --force to write into it"
        )
    return False


def check_counts(**counts: int) -> None:
    """A ``FlexispeechError`` naming the first count below 0 (``n_train=-1`` would quietly
    make an empty split)."""
    for name, n in counts.items():
        if n < 0:
            raise FlexispeechError(f"{name} must be >= 0, got {n}")


def file_digests(files: Sequence[Path]) -> dict[str, str]:
    """File name -> sha256 of its bytes: what tells a rebuild from another source apart
    (names alone do not; a hash is cheap next to parsing the file)."""
    digests = {}
    for path in files:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digests[path.name] = h.hexdigest()
    return digests


def clear_audio(out: Path, src: Path | None) -> None:
    """Before a forced rebuild: remove ``out/audio`` so no audio of the old corpus stays
    behind (and ``corpus.json`` first: it would point at removed files if the rebuild fails).
    ``src``: the local source folder, which must not lie in what is removed (None: the
    source is not a folder here, e.g. the hub)."""
    audio = out / "audio"
    if not audio.is_dir():
        return
    s, a = (src.resolve() if src is not None else None), audio.resolve()
    if s is not None and (s == a or a in s.parents or s == out.resolve()):
        raise FlexispeechError(
            f"{out}: --force would delete {audio}, which may hold the source audio of {src}; "
            "use another --out"
        )
    (out / MARKER).unlink(missing_ok=True)
    shutil.rmtree(audio)


def _built_options(out: Path, text_task: bool = False) -> dict | None:
    """The build options of the complete corpus (or text task) in ``out``, None without one
    (the counts an import adds to its info, ``skipped``, are not options)."""
    if not (is_text_task(out) if text_task else is_corpus(out)):
        return None
    built = dict((read_text_task_info if text_task else read_corpus_info)(out).get("info", {}))
    built.pop("skipped", None)
    return built


def is_complete(out: Path, info: dict) -> bool:
    """Whether ``out`` holds a complete corpus built with the same options ``info``."""
    return _built_options(out) == info


# Reasons whose "skipped N entries with <reason> audio" would not read well.
_REASONS = {
    "outside": "a path outside the source folder",
    "malformed": "a malformed row",
    "duplicate": "audio an earlier entry already listed (the first is kept)",
}


def report_skipped(skipped: dict[str, Sequence[str]], source: Path) -> None:
    """Log how many entries of ``source`` were skipped and why, with a few examples."""
    for reason, keys in skipped.items():
        if keys:
            log.warning(
                "%s: skipped %d entries with %s (e.g. %s)",
                source,
                len(keys),
                _REASONS.get(reason, f"{reason} audio"),
                ", ".join(keys[:3]),
            )
