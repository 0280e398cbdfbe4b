"""recipes/synthetic/channel_offline.py: stored evaluations compared by channel, the channel
replayed from the corpus plan; and data_prep.tts.voices_named, which that replay needs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from data_prep.synthetic import make_plan
from data_prep.tts import voices_named
from flexispeech.errors import FlexispeechError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "synthetic"))
import channel_offline  # noqa: E402

IDS = {"espeak:en-us+m3", "espeak:en-us+f1", "espeak:en-029+f2", "flite:rms", "flite:kal", "pico:en-US"}


def test_voices_named_keeps_the_installed_order_and_the_unseen_voices() -> None:
    voices = voices_named(IDS)
    # espeak lists accents, then variants within an accent (m before f); flite: kal before rms
    assert [v.name for v in voices["espeak"]] == ["en-us+m3", "en-us+f1", "en-029+f2"]
    assert [v.name for v in voices["flite"]] == ["kal", "rms"]
    assert {v.id for vs in voices.values() for v in vs if v.unseen} == {"espeak:en-029+f2", "flite:rms"}
    with pytest.raises(FlexispeechError, match="does not know"):
        voices_named(IDS | {"espeak:klingon"})


def _evaluation(name: str, plans: list, errors: dict[str, int]) -> dict:
    rows = [
        {"id": p.id, "ref": p.text, "voice": p.voice.name, "errors": errors.get(p.id, 0), "ref_words": 10}
        for p in plans
    ]
    return {"name": name, "data": "data/syn", "split": "test", "audio_ctx": 1500, "utterances": rows}


def test_runs_are_paired_on_each_channel_of_the_plan(tmp_path: Path, capsys) -> None:
    (tmp_path / "corpus.json").write_text(
        json.dumps({"info": {"size": "small", "seed": 3, "voices": sorted(IDS)}})
    )
    plans = [p for p in make_plan("small", 3, voices_named(IDS)) if p.split == "test"]
    phone = [p.id for p in plans if p.channel == "telephone"]
    assert phone and len(phone) < len(plans)
    # the run is worse than the base on every telephone row, the same elsewhere
    for name, errors in (("base", {}), ("run", dict.fromkeys(phone, 2))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_evaluation(name, plans, errors)))
    args = [
        str(tmp_path / "corpus.json"),
        str(tmp_path / "base"),
        str(tmp_path / "run"),
        "--baseline",
        "base",
    ]
    assert channel_offline.main(args) == 0
    rows = {
        line.split("|")[2].strip(): line.split("|")
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| run")
    }
    assert set(rows) == {"all", "wideband channel", "telephone channel"}
    tel = [c.strip() for c in rows["telephone channel"]]
    assert tel[3] == str(len(phone)) and (tel[8], tel[9]) == ("0", str(len(phone)))  # worse on each
    assert rows["wideband channel"][6].strip() == "+0.0"
    # a row that is not the plan's (another corpus) is refused, naming the file
    bad = _evaluation("run", plans, {})
    bad["utterances"][0]["ref"] = "something else"
    (tmp_path / "run" / "results.json").write_text(json.dumps(bad))
    assert channel_offline.main(args) == 1
    assert "run: row" in capsys.readouterr().err
