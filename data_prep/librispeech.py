"""Import LibriSpeech from a local copy in its released layout (or, on request, from a hub).

Layout (as unpacked from the openslr.org tarballs)::

    LibriSpeech/
      SPEAKERS.TXT                                 optional: "ID | SEX | SUBSET | MINUTES | NAME"
      <subset>/<speaker>/<chapter>/
        <speaker>-<chapter>.trans.txt              "<speaker>-<chapter>-<utt> TRANSCRIPT" lines
        <speaker>-<chapter>-<utt>.flac

Subsets map to splits: train-* -> train, dev-* -> validation, test-* -> test. The flac
files are hard-linked (or copied) into ``out/audio/<subset>/...``. Extra columns:
``subset``, ``chapter``, ``gender`` ("F"/"M", "" when SPEAKERS.TXT is absent).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from data_prep.folder import audio_duration, check_out, clear_audio, link_or_copy, read_text, report_skipped
from flexispeech.data.corpus import write_corpus
from flexispeech.errors import FlexispeechError

SUBSETS = {
    "train-clean-100": "train",
    "train-clean-360": "train",
    "train-other-500": "train",
    "dev-clean": "validation",
    "dev-other": "validation",
    "test-clean": "test",
    "test-other": "test",
}
# subset -> (config, split) of the hub's "openslr/librispeech_asr" dataset
HUB_SPLITS = {
    "train-clean-100": ("clean", "train.100"),
    "train-clean-360": ("clean", "train.360"),
    "train-other-500": ("other", "train.500"),
    "dev-clean": ("clean", "validation"),
    "dev-other": ("other", "validation"),
    "test-clean": ("clean", "test"),
    "test-other": ("other", "test"),
}


def find_root(src: Path) -> Path:
    """The ``LibriSpeech`` directory in or at ``src`` (the one that holds subset folders)."""
    for root in (src / "LibriSpeech", src):
        if root.is_dir() and any((root / s).is_dir() for s in SUBSETS):
            return root
    raise FlexispeechError(
        f"{src}: not a LibriSpeech tree; expected a folder (or its LibriSpeech/ subfolder) holding "
        f"one or more of {', '.join(SUBSETS)}"
    )


def read_speakers(root: Path) -> dict[str, str]:
    """speaker id -> sex ("F"/"M") from SPEAKERS.TXT; empty if the file is absent."""
    path = root / "SPEAKERS.TXT"
    if not path.is_file():
        return {}
    sexes = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = [f.strip() for f in line.split("|")]
        if line.startswith(";") or len(fields) < 2:
            continue
        sexes[fields[0]] = fields[1]
    return sexes


def _check_subsets(subsets: Sequence[str]) -> None:
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown:
        raise FlexispeechError(f"unknown LibriSpeech subsets {unknown}; known: {', '.join(SUBSETS)}")


def prepare_librispeech(
    src: Path | None,
    out: Path,
    subsets: Sequence[str] | None = None,
    *,
    hub_id: str | None = None,
    force: bool = False,
) -> Path:
    """Import LibriSpeech ``subsets`` (default: every subset present) from ``src`` into ``out``.

    Args:
        src: the folder holding ``LibriSpeech/`` (or ``LibriSpeech/`` itself); not needed
            with hub_id
        out: the corpus directory to write
        subsets: e.g. train-clean-100 dev-clean test-clean (default: every subset present)
        hub_id: load this Hugging Face dataset instead of ``src`` (needs a hub)
        force: rebuild even if ``out`` holds a complete corpus

    With ``hub_id`` (e.g. ``"openslr/librispeech_asr"``) the subsets are loaded through
    ``datasets.load_dataset`` instead and ``src`` is ignored; this needs a reachable (or
    cached) hub and is never the default. Utterances listed in a transcript whose flac is
    missing or unreadable are skipped and counted in ``corpus.json`` (info ``skipped``).
    Safe to re-run: a complete corpus built with the same options is kept unless ``force``.

    Returns:
        ``out``.

    Raises:
        FlexispeechError: ``src`` is not a LibriSpeech tree (the message lists the subset
            folders expected), a requested subset is absent or unknown, or a transcript line
            is malformed.
    """
    out = Path(out)
    if subsets is not None:
        _check_subsets(subsets)
    if hub_id is not None:
        return _prepare_from_hub(hub_id, out, list(subsets or SUBSETS), force=force)
    if src is None:
        raise FlexispeechError("librispeech: give --src (a local LibriSpeech folder) or --hub-id")
    root = find_root(Path(src))
    present = [s for s in SUBSETS if (root / s).is_dir()]
    if subsets is None:
        subsets = present
    missing = [s for s in subsets if s not in present]
    if missing:
        raise FlexispeechError(f"{root}: subsets {missing} not found; present: {', '.join(present)}")
    info = {"importer": "librispeech", "source": str(root.resolve()), "subsets": list(subsets)}
    if check_out(out, info, force):
        return out
    if force:
        clear_audio(out, root)

    genders = read_speakers(root)
    transcripts = [t for s in subsets for t in sorted((root / s).glob("*/*/*.trans.txt"))]
    rows, skipped = [], {"missing": [], "unreadable": []}
    for trans in tqdm(transcripts, desc="librispeech chapters", unit="chapter"):
        subset = trans.relative_to(root).parts[0]
        for lineno, line in enumerate(read_text(trans).splitlines(), 1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            if utt_id.count("-") != 2 or not text:
                raise FlexispeechError(f"{trans}:{lineno}: expected '<speaker>-<chapter>-<utt> TEXT'")
            flac = trans.parent / f"{utt_id}.flac"
            if not flac.is_file():
                skipped["missing"].append(utt_id)
                continue
            duration = audio_duration(flac)
            if duration is None:
                skipped["unreadable"].append(utt_id)
                continue
            rel = flac.relative_to(root)
            link_or_copy(flac, out / "audio" / rel)
            speaker, chapter, _ = utt_id.split("-")
            rows.append(
                {
                    "id": utt_id,
                    "audio": (Path("audio") / rel).as_posix(),
                    "text": text,
                    "duration": duration,
                    "speaker": speaker,
                    "split": SUBSETS[subset],
                    "subset": subset,
                    "chapter": chapter,
                    "gender": genders.get(speaker, ""),
                }
            )
    report_skipped(skipped, root)
    if not rows:
        raise FlexispeechError(f"{root}: no utterances with readable audio in {', '.join(subsets)}")
    info["skipped"] = {k: len(v) for k, v in skipped.items()}
    return write_corpus(rows, out, name="librispeech", info=info)


def _prepare_from_hub(hub_id: str, out: Path, subsets: list[str], *, force: bool) -> Path:
    """Load ``subsets`` of ``hub_id`` with ``Audio(decode=False)`` and write their flac bytes.

    ``decode=False`` because decoding in datasets 5.x needs torchcodec; soundfile reads the
    written files instead.
    """
    import datasets

    info = {"importer": "librispeech", "hub_id": hub_id, "subsets": subsets}
    if check_out(out, info, force):
        return out
    if force:
        clear_audio(out, None)  # the source is the hub: nothing of it lies under out
    rows = []
    for subset in subsets:
        config, split = HUB_SPLITS[subset]
        try:
            ds = datasets.load_dataset(hub_id, config, split=split)
        except Exception as err:  # the hub raises many types (connection, offline, missing)
            raise FlexispeechError(f"{hub_id} ({config}/{split}): cannot load from the hub: {err}") from None
        ds = ds.cast_column("audio", datasets.Audio(decode=False))
        for ex in tqdm(ds, desc=f"librispeech {subset}", unit="utt"):
            utt_id = ex["id"]
            speaker, chapter = str(ex["speaker_id"]), str(ex["chapter_id"])
            rel = Path("audio") / subset / speaker / chapter / f"{utt_id}.flac"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            audio = ex["audio"]
            if audio.get("bytes"):
                (out / rel).write_bytes(audio["bytes"])
            else:
                link_or_copy(Path(audio["path"]), out / rel)
            duration = audio_duration(out / rel)
            if duration is None:
                raise FlexispeechError(f"{hub_id} {subset} {utt_id}: audio cannot be decoded by soundfile")
            rows.append(
                {
                    "id": utt_id,
                    "audio": rel.as_posix(),
                    "text": ex["text"],
                    "duration": duration,
                    "speaker": speaker,
                    "split": SUBSETS[subset],
                    "subset": subset,
                    "chapter": chapter,
                    "gender": "",
                }
            )
    return write_corpus(rows, out, name="librispeech", info=info)
