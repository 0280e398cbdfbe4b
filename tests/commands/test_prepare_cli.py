"""``flexispeech prepare NAME`` for the text tasks and the corpus importers, through the
command line: tiny inputs in each importer's own format, a real ``python -m flexispeech``
process per build, then the prepared corpus is loaded back. Bad input (in-process, same
``main``) is one stderr line naming the file or option, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flexispeech.cli import main
from flexispeech.data.corpus import load_corpus, load_row_audio, read_corpus_info
from flexispeech.data.text_format import TEXT_TASK_COLUMNS, load_text_task

SR = 16_000
MP3_FRAME = 1152 / SR  # mp3 frame counts carry encoder padding: one frame of slack


def prepare(*args: str) -> subprocess.CompletedProcess:
    """``python -m flexispeech prepare ARGS`` in a child process (bounded in time)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "flexispeech", "prepare", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stdout


def tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# -- inputs in each importer's format -----------------------------------------------------


def gsm8k_dir(root: Path) -> Path:
    """train.jsonl (2 records, 1 and 3 reasoning lines) and test.jsonl (1 record)."""
    root.mkdir(parents=True)
    train = [
        {"question": "Ann has 2 pens and buys 3. How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
        {
            "question": "A box holds 4 rows of 6. Half are sold.",
            "answer": "4 * 6 = 24\n24 / 2 = 12\nSo 12.\n#### 12",
        },
    ]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in train) + "\n")
    (root / "test.jsonl").write_text(
        json.dumps({"question": "What is 7 - 1?", "answer": "7 - 1 = 6\n#### 6"}) + "\n"
    )
    return root


def squad_dir(root: Path) -> Path:
    """A v2 train file (one answerable, one impossible question) and a v1.1 dev file."""
    root.mkdir(parents=True)
    train = {
        "version": "v2.0",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Oslo is in Norway.",
                        "qas": [
                            {
                                "id": "a1",
                                "question": "Where is Oslo?",
                                "answers": [{"text": "Norway", "answer_start": 11}],
                            },
                            {"id": "a2", "question": "Where is Rome?", "answers": [], "is_impossible": True},
                        ],
                    }
                ],
            }
        ],
    }
    dev = {
        "data": [
            {
                "title": "D",
                "paragraphs": [
                    {
                        "context": "Ice is cold.",
                        "qas": [
                            {
                                "id": "d1",
                                "question": "What is cold?",
                                "answers": [{"text": "Ice", "answer_start": 0}],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    (root / "train-v2.0.json").write_text(json.dumps(train))
    (root / "dev-v1.1.json").write_text(json.dumps(dev))
    return root


LIBRI = [
    ("train-clean-100", "19", "198", 0, 0.5),
    ("train-clean-100", "19", "198", 1, 0.25),
    ("dev-clean", "84", "121", 0, 0.3),
    ("test-clean", "61", "70", 0, 0.4),
]


def librispeech_dir(base: Path) -> Path:
    """``base/LibriSpeech/<subset>/<spk>/<chapter>/`` with flac files, a trans.txt per
    chapter and SPEAKERS.TXT (speaker 61 deliberately absent from it)."""
    root = base / "LibriSpeech"
    for subset, spk, ch, i, seconds in LIBRI:
        d = root / subset / spk / ch
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / f"{spk}-{ch}-{i:04d}.flac", tone(seconds, 300 + 100 * i), SR)
        with (d / f"{spk}-{ch}.trans.txt").open("a") as f:
            f.write(f"{spk}-{ch}-{i:04d} SAY NUMBER {i}\n")
    (root / "SPEAKERS.TXT").write_text(
        "; ID |SEX| SUBSET |MINUTES| NAME\n19 | F | train-clean-100 | 25 | A\n84 | M | dev-clean | 8 | B\n"
    )
    return base


CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"


def commonvoice_dir(root: Path) -> Path:
    """clips/*.mp3 and train/dev/test.tsv; one train row lists a clip that is missing."""
    (root / "clips").mkdir(parents=True)
    for name, seconds in [("cv_1.mp3", 1.0), ("cv_2.mp3", 0.5), ("cv_3.mp3", 0.75)]:
        sf.write(root / "clips" / name, tone(seconds), SR)
    (root / "train.tsv").write_text(
        f'{CV_HEADER}\nspk1\tcv_1.mp3\tThe first "clip".\t2\t0\t\tfemale\t\ten\t\n'
        f"spk2\tcv_404.mp3\tMissing.\t2\t0\t\t\t\ten\t\n"
    )
    (root / "dev.tsv").write_text(f"{CV_HEADER}\nspk2\tcv_2.mp3\tA dev clip.\t2\t0\t\tmale\t\ten\t\n")
    (root / "test.tsv").write_text(f"{CV_HEADER}\nspk3\tcv_3\tNo extension listed.\t2\t0\t\t\t\ten\t\n")
    return root


# -- builds through the command line ------------------------------------------------------


@pytest.mark.parametrize(("task", "extra_column"), [("math", "theme"), ("qa", "kind")])
def test_prepare_generated_text_task(tmp_path: Path, task: str, extra_column: str) -> None:
    out = tmp_path / task
    stdout = ok(
        prepare(
            task, "--out", str(out), "--n-train", "6", "--n-validation", "1", "--n-test", "3", "--seed", "2"
        )
    )
    assert stdout == f"{out}: text task {task}, 10 examples (train 6, validation 1, test 3)\n"
    ds = load_text_task(out)
    assert list(ds) == ["train", "validation", "test"] and [len(ds[s]) for s in ds] == [6, 1, 3]
    assert set(TEXT_TASK_COLUMNS) | {extra_column} <= set(ds["train"].column_names)
    assert all(ds[s]["split"] == [s] * len(ds[s]) for s in ds)
    top = 6 if task == "math" else 3
    assert all(1 <= d <= top for s in ds for d in ds[s]["difficulty"])
    assert all(a for s in ds for a in ds[s]["answer"])
    info = json.loads((out / "task.json").read_text())
    assert info["name"] == task and info["info"]["seed"] == 2


def test_prepare_gsm8k(tmp_path: Path) -> None:
    out = tmp_path / "gsm8k"
    stdout = ok(prepare("gsm8k", "--src", str(gsm8k_dir(tmp_path / "src")), "--out", str(out)))
    assert stdout == f"{out}: text task gsm8k, 3 examples (train 2, test 1)\n"
    ds = load_text_task(out)
    assert list(ds) == ["train", "test"]
    assert ds["train"]["answer"] == ["5", "12"] and ds["test"]["answer"] == ["6"]
    assert ds["train"]["difficulty"] == [1, 3]  # non-empty solution lines before "####"
    assert ds["train"]["prompt"][0] == "Ann has 2 pens and buys 3. How many?"
    assert set(ds["train"]["source"]) == {"gsm8k"}


def test_prepare_squad(tmp_path: Path) -> None:
    out = tmp_path / "squad"
    stdout = ok(prepare("squad", "--src", str(squad_dir(tmp_path / "src")), "--out", str(out)))
    assert stdout == f"{out}: text task squad, 3 examples (train 2, test 1)\n"
    ds = load_text_task(out)
    assert list(ds) == ["train", "test"]  # dev -> test: SQuAD's own test set is hidden
    assert ds["train"]["id"] == ["squad-a1", "squad-a2"]
    assert ds["train"]["answer"] == ["Norway", ""] and ds["train"]["answers"] == [["Norway"], []]
    assert ds["test"]["prompt"] == ["Passage: Ice is cold.\nQuestion: What is cold?"]
    assert ds["test"]["difficulty"] == [0]


def test_prepare_librispeech(tmp_path: Path) -> None:
    out = tmp_path / "libri"
    src = librispeech_dir(tmp_path / "src")
    stdout = ok(prepare("librispeech", "--src", str(src), "--out", str(out)))
    assert f"{out}: " in stdout and "(train 2, validation 1, test 1)" in stdout
    ds = load_corpus(out)
    assert [len(ds[s]) for s in ds] == [2, 1, 1]
    train = sorted(ds["train"], key=lambda r: r["id"])
    assert [r["id"] for r in train] == ["19-198-0000", "19-198-0001"]
    assert [r["duration"] for r in train] == pytest.approx([0.5, 0.25])
    assert [r["text"] for r in train] == ["SAY NUMBER 0", "SAY NUMBER 1"]
    assert (ds["validation"][0]["gender"], ds["test"][0]["gender"]) == ("M", "")
    assert load_row_audio(out, train[0]).shape == (SR // 2,)
    # --subsets takes several values
    only = tmp_path / "only"
    ok(prepare("librispeech", "--src", str(src), "--out", str(only), "--subsets", "dev-clean", "test-clean"))
    assert read_corpus_info(only)["splits"] == {"validation": 1, "test": 1}


def test_prepare_commonvoice(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    stdout = ok(prepare("commonvoice", "--src", str(commonvoice_dir(tmp_path / "en")), "--out", str(out)))
    assert "(train 1, validation 1, test 1)" in stdout
    ds = load_corpus(out)
    assert ds["train"]["text"] == ['The first "clip".'] and ds["train"]["gender"] == ["female"]
    assert ds["validation"]["speaker"] == ["spk2"] and ds["test"]["id"] == ["cv_3"]
    assert ds["test"]["audio"] == ["audio/clips/cv_3.mp3"]
    assert [ds[s][0]["duration"] for s in ds] == pytest.approx([1.0, 0.5, 0.75], abs=MP3_FRAME)
    assert read_corpus_info(out)["info"]["skipped"] == {
        "missing": 1,
        "unreadable": 0,
        "duplicate": 0,
        "malformed": 0,
    }
    assert abs(load_row_audio(out, ds["test"][0]).size - 0.75 * SR) <= 1152


# -- bad input: one line naming the file, no traceback ------------------------------------


def test_bad_gsm8k_record_names_file_and_line(tmp_path: Path, error_line) -> None:
    src = gsm8k_dir(tmp_path / "src")
    with (src / "test.jsonl").open("a") as f:
        f.write('{"question": "no answer key"}\n')
    assert main(["prepare", "gsm8k", "--src", str(src), "--out", str(tmp_path / "o")]) == 2
    error_line("prepare", "test.jsonl:2", "'answer'")


def test_bad_squad_layout_names_the_file(tmp_path: Path, error_line) -> None:
    src = squad_dir(tmp_path / "src")
    (src / "dev-v1.1.json").write_text(
        json.dumps({"data": [{"paragraphs": [{"qas": [{"id": "x", "question": "q"}]}]}]})
    )
    assert main(["prepare", "squad", "--src", str(src), "--out", str(tmp_path / "o")]) == 2
    error_line("prepare", "dev-v1.1.json", "KeyError 'context'")


def test_bad_librispeech_transcript_line_names_file_and_line(tmp_path: Path, error_line) -> None:
    src = librispeech_dir(tmp_path / "src")
    trans = src / "LibriSpeech/dev-clean/84/121/84-121.trans.txt"
    trans.write_text(trans.read_text() + "84-121 TEXT WITHOUT AN UTTERANCE NUMBER\n")
    assert main(["prepare", "librispeech", "--src", str(src), "--out", str(tmp_path / "o")]) == 2
    error_line("prepare", "84-121.trans.txt:2", "<speaker>-<chapter>-<utt>")


def test_bad_commonvoice_tsv_names_the_file(tmp_path: Path, error_line) -> None:
    src = commonvoice_dir(tmp_path / "en")
    (src / "dev.tsv").write_text("path\tsentence\ncv_2.mp3\thi\n")
    assert main(["prepare", "commonvoice", "--src", str(src), "--out", str(tmp_path / "o")]) == 2
    error_line("prepare", "dev.tsv", "client_id")


def test_bad_generator_option_is_one_line(tmp_path: Path, error_line) -> None:
    assert main(["prepare", "math", "--out", str(tmp_path / "o"), "--max-steps", "0"]) == 2
    error_line("prepare", "max_steps", "0")


def folder_dir(root: Path) -> Path:
    """Two wav files and the metadata.csv that ``prepare folder`` reads."""
    root.mkdir(parents=True)
    for name in ("a", "b"):
        sf.write(root / f"{name}.wav", tone(0.3), SR)
    (root / "metadata.csv").write_text("file_name,transcription\na.wav,one\nb.wav,two\n")
    return root


@pytest.mark.parametrize(
    ("name", "make", "text_file"),
    [
        ("folder", folder_dir, "metadata.csv"),
        ("gsm8k", gsm8k_dir, "train.jsonl"),
        ("squad", squad_dir, "train-v2.0.json"),
        ("librispeech", librispeech_dir, "LibriSpeech/train-clean-100/19/198/19-198.trans.txt"),
        ("commonvoice", commonvoice_dir, "train.tsv"),
    ],
)
def test_a_text_file_that_is_not_utf8_names_the_file(
    tmp_path: Path, error_line, name, make, text_file
) -> None:
    src = make(tmp_path / "src")
    (src / text_file).write_bytes(b"\xff\xfe" + (src / text_file).read_bytes())  # a UTF-16 byte-order mark
    assert main(["prepare", name, "--src", str(src), "--out", str(tmp_path / "o")]) == 2
    error_line("prepare", Path(text_file).name, "UTF-8")


@pytest.mark.parametrize("below", [False, True], ids=["out", "below"])
@pytest.mark.parametrize("name", ["math", "qa", "gsm8k", "squad", "librispeech", "commonvoice", "folder"])
def test_out_that_is_a_file_is_one_line(tmp_path: Path, error_line, name: str, below: bool) -> None:
    """--out FILE, or --out FILE/sub (below a file): one line, never NotADirectoryError."""
    taken = tmp_path / "taken"
    taken.write_text("a file, not a directory")
    out = taken / "sub" if below else taken
    make = {
        "gsm8k": gsm8k_dir,
        "squad": squad_dir,
        "librispeech": librispeech_dir,
        "commonvoice": commonvoice_dir,
        "folder": folder_dir,
    }
    src = (
        ["--src", str(make[name](tmp_path / "src"))] if name in make else ["--n-train", "1", "--n-test", "1"]
    )
    assert main(["prepare", name, *src, "--out", str(out)]) == 2
    error_line("prepare", str(out), str(taken), "not a directory")
    assert taken.read_text() == "a file, not a directory"


@pytest.mark.parametrize(
    ("name", "make", "text_file"), [("gsm8k", gsm8k_dir, "test.jsonl"), ("squad", squad_dir, "dev-v1.1.json")]
)
def test_text_task_from_another_src_is_refused_unless_force(
    tmp_path: Path, error_line, capsys, name, make, text_file
) -> None:
    """Another --src with the same file names is another source: an error without --force."""
    out = tmp_path / "out"
    a, b = make(tmp_path / "a"), make(tmp_path / "b")
    (b / text_file).write_text((b / text_file).read_text().replace("7", "8").replace("Ice", "Snow"))
    assert main(["prepare", name, "--src", str(a), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["prepare", name, "--src", str(b), "--out", str(out)]) == 2
    error_line("prepare", str(out), "already holds a text task", "--force")
    before = load_text_task(out, "test")["prompt"]
    assert main(["prepare", name, "--src", str(b), "--out", str(out), "--force"]) == 0
    assert load_text_task(out, "test")["prompt"] != before


def test_unknown_synthetic_engine_lists_the_known_ones(tmp_path: Path, error_line) -> None:
    from data_prep.tts import ENGINE_SHARES

    assert main(["prepare", "synthetic", "--out", str(tmp_path / "o"), "--engines", "espek"]) == 2
    error_line("prepare", "espek", "unknown engine", *ENGINE_SHARES)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["qa", "--n-train", "-1", "--n-validation", "1", "--n-test", "1"], "n_train must be >= 0"),
        (["math", "--n-train", "1", "--n-validation", "1", "--n-test", "-2"], "n_test must be >= 0"),
        (["synthetic", "--workers", "-1", "--engines", "espek"], "--workers -1"),
    ],
)
def test_negative_counts_are_one_line(tmp_path: Path, error_line, args: list[str], needle: str) -> None:
    assert main(["prepare", *args, "--out", str(tmp_path / "o")]) == 2
    error_line("prepare", needle)


def test_librispeech_hub_id_needs_no_src(tmp_path: Path, error_line) -> None:
    from data_prep.librispeech import prepare_librispeech
    from flexispeech.commands.prepare import corpus_parser

    parser = corpus_parser("librispeech", prepare_librispeech)
    options = parser.parse_args(["--hub-id", "openslr/librispeech_asr", "--out", "o"])
    assert options.src is None and options.hub_id == "openslr/librispeech_asr"
    assert main(["prepare", "librispeech", "--out", str(tmp_path / "o")]) == 2  # neither: one line
    error_line("prepare", "--src", "--hub-id")


@pytest.mark.parametrize("name", ["math", "qa", "gsm8k", "squad", "synthetic"])
def test_every_option_has_a_help_text(name: str) -> None:
    from data_prep.tts import ENGINE_SHARES
    from flexispeech.commands.prepare import _resolve, corpus_parser

    parser = corpus_parser(name, _resolve(name))
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help.split(" (default")[0] not in (action.dest, ""), (name, action.dest)
            assert "(default" in action.help or action.required, (name, action.dest)
    helps = {a.dest: a.help for a in parser._actions}
    if name in ("gsm8k", "squad"):
        assert "split" in helps["src"] and "stem" in helps["src"]
    if name == "synthetic":
        assert all(engine in helps["engines"] for engine in ENGINE_SHARES)
