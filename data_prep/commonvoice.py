"""Import one language of Mozilla Common Voice from a local copy in its released layout.

Layout (one language folder of a Common Voice release)::

    <lang>/
      clips/*.mp3
      train.tsv  dev.tsv  test.tsv      client_id, path, sentence, up_votes, ... (tab-separated)
      validated.tsv, other.tsv, ...     ignored: only the official splits are imported

Only clips listed in train/dev/test are imported (dev -> validation); the speaker is the
anonymous ``client_id``. The mp3 files are hard-linked (or copied) into ``out/audio/clips``
unchanged: libsndfile >= 1.1 decodes mp3, so no conversion is needed. Rows whose clip is
missing or unreadable are skipped and counted, not fatal: releases do ship a few broken
clips. Extra columns kept when present: ``accent``/``accents``, ``gender``, ``age``,
``locale``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tqdm import tqdm

from data_prep.folder import audio_duration, check_out, clear_audio, link_or_copy, read_text, report_skipped
from flexispeech.data.corpus import write_corpus
from flexispeech.errors import FlexispeechError

SPLIT_FILES = {"train.tsv": "train", "dev.tsv": "validation", "test.tsv": "test"}
REQUIRED_TSV_COLUMNS = ("client_id", "path", "sentence")
EXTRA_COLUMNS = ("accent", "accents", "gender", "age", "locale")


def read_tsv(path: Path, malformed: list[str] | None = None) -> list[dict[str, str]]:
    """Rows of a Common Voice tsv. Quoting is off: sentences contain bare quote characters.

    A row cut short (fewer columns than the header) or with an empty path or sentence is
    left out; its ``<file>:<line>`` is appended to ``malformed``, for the caller to count.
    """
    csv.field_size_limit(1 << 24)
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in REQUIRED_TSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise FlexispeechError(f"{path}: lacks columns {missing} (found {reader.fieldnames})")
        rows = []
        for record in reader:
            # DictReader fills the columns a short row lacks with None
            if (
                record["client_id"] is None
                or not (record["path"] or "").strip()
                or not (record["sentence"] or "").strip()
            ):
                if malformed is not None:
                    malformed.append(f"{path.name}:{reader.line_num}")  # one line per row: no quoting
                continue
            rows.append(record)
        return rows


def prepare_commonvoice(src: Path, out: Path, *, force: bool = False) -> Path:
    """Import the Common Voice language folder ``src`` (clips/ + train/dev/test.tsv) into ``out``.

    Args:
        src: the language folder (clips/*.mp3, train.tsv, dev.tsv, test.tsv)
        out: the corpus directory to write
        force: rebuild even if ``out`` holds a complete corpus

    Safe to re-run: a complete corpus built from the same folder is kept unless ``force``.
    Skipped rows are logged and counted in ``corpus.json`` (info ``skipped``: ``missing``,
    ``unreadable``, ``duplicate``, ``malformed``: too few columns or an empty sentence,
    logged as ``<file>:<line>``).

    Returns:
        ``out``.

    Raises:
        FlexispeechError: ``src`` has no ``clips/`` folder or none of train/dev/test.tsv, a tsv
            lacks client_id/path/sentence, or no listed clip is usable.
    """
    src, out = Path(src), Path(out)
    tsvs = [name for name in SPLIT_FILES if (src / name).is_file()]
    if not (src / "clips").is_dir() or not tsvs:
        raise FlexispeechError(
            f"{src}: not a Common Voice language folder; expected clips/ and at least one of "
            f"{', '.join(SPLIT_FILES)}"
        )
    info = {"importer": "commonvoice", "source": str(src.resolve()), "tsv": tsvs}
    if check_out(out, info, force):
        return out
    if force:
        clear_audio(out, src)

    malformed: list[str] = []
    listed = [(SPLIT_FILES[name], r) for name in tsvs for r in read_tsv(src / name, malformed)]
    rows, seen = [], set()
    skipped: dict[str, list[str]] = {"missing": [], "unreadable": [], "duplicate": [], "malformed": malformed}
    for split, record in tqdm(listed, desc=f"commonvoice {src.name}", unit="clip"):
        name = record["path"]
        if not name.endswith((".mp3", ".wav", ".flac", ".ogg")):
            name += ".mp3"  # the earliest releases list clip ids without the extension
        clip = src / "clips" / name
        if name in seen:
            skipped["duplicate"].append(name)
            continue
        if not clip.is_file():
            skipped["missing"].append(name)
            continue
        duration = audio_duration(clip)
        if duration is None:
            skipped["unreadable"].append(name)
            continue
        seen.add(name)
        rel = Path("audio") / "clips" / name
        link_or_copy(clip, out / rel)
        rows.append(
            {
                "id": Path(name).stem,
                "audio": rel.as_posix(),
                "text": record["sentence"],
                "duration": duration,
                "speaker": record["client_id"],
                "split": split,
                **{c: record[c] or "" for c in EXTRA_COLUMNS if c in record},
            }
        )
    report_skipped(skipped, src)
    if not rows:
        raise FlexispeechError(f"{src}: none of the {len(listed)} listed clips is present and readable")
    info["skipped"] = {k: len(v) for k, v in skipped.items()}
    return write_corpus(rows, out, name=f"commonvoice-{src.name}", info=info)
