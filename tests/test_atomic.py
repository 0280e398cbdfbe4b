"""Atomic writes: the helper and every writer built on it, killed before each of its steps.

A reader must see the old state or the new one, never a mix (docs/guarantees.md, 4). The
corpus and text-task writers are tested the same way in ``tests/data``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from interruptions import Killed, killed_before, views_at_every_kill
from torch import nn

from flexispeech import FlexiLoraConfig, ThresholdRouter, attach_router, inject, load_adapter, save_adapter
from flexispeech.atomic import create_dir, existing_dir, replace_dir, write_file, write_text
from flexispeech.errors import FlexispeechError
from flexispeech.lora.inject import flexi_layers, get_state
from flexispeech.models import sources
from flexispeech.models.cache import COMPLETE_MARKER, atomic_dir
from flexispeech.models.random_init import randomize_adapters
from flexispeech.training.checkpoint import TrainerState, find_checkpoint, load_checkpoint, save_checkpoint

BETWEEN_THE_RENAMES = "rename {name} -> {name}.old"


def dir_view(target: Path) -> dict[str, str] | None:
    """What a reader of a replace_dir target sees: file name -> text (None: nothing there)."""
    found = existing_dir(target)
    if not found.is_dir():
        return None
    return {p.name: p.read_text() for p in sorted(found.iterdir())}


def write_dir(target: Path, files: dict[str, str]) -> None:
    with replace_dir(target) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)


def assert_old_or_new(old, new, kills, between: str | None = None) -> None:
    """Every view after a kill is the old or the new one; the kill between the two renames of
    a directory swap (``between``: the first rename) was among them and read the old one."""
    assert old != new and kills, "the test must start from a state that the write changes"
    for steps, view in kills:
        assert view in (old, new), f"a mix after the steps {steps}: {view}"
    assert kills[0][1] == old  # killed before its first step: untouched
    if between is not None:
        assert [view for steps, view in kills if steps[-1:] == [between]] == [old]


# --- the helper ---------------------------------------------------------------------------


def test_write_file_is_old_or_new_and_cleans_up_on_error(tmp_path: Path) -> None:
    def read(d: Path) -> str:
        return (d / "f.json").read_text()

    old, new, kills = views_at_every_kill(
        tmp_path / "kills",
        lambda d: (d / "f.json").write_text("old"),
        lambda d: write_text(d / "f.json", "new"),
        read,
    )
    assert (old, new) == ("old", "new")
    assert_old_or_new(old, new, kills)

    target = tmp_path / "g.bin"
    target.write_bytes(b"old")

    def half_written(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_file(target, half_written)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["g.bin", "kills"]


def test_replace_dir_is_old_or_new_and_readers_fall_back_to_old(tmp_path: Path) -> None:
    old_files, new_files = {"a.txt": "old", "b.txt": "old"}, {"a.txt": "new", "c.txt": "new"}
    old, new, kills = views_at_every_kill(
        tmp_path,
        lambda d: write_dir(d / "t", old_files),
        lambda d: write_dir(d / "t", new_files),
        lambda d: dir_view(d / "t"),
    )
    assert (old, new) == (old_files, new_files)
    assert_old_or_new(old, new, kills, between=BETWEEN_THE_RENAMES.format(name="t"))
    # Between the renames the target itself is gone: only the fallback finds the old copy.
    between = next(
        i for i, (steps, _) in enumerate(kills) if steps[-1:] == [BETWEEN_THE_RENAMES.format(name="t")]
    )
    assert not (tmp_path / f"k{between}" / "t").exists() and (tmp_path / f"k{between}" / "t.old").is_dir()


def test_replace_dir_first_write_and_the_write_after_a_kill(tmp_path: Path) -> None:
    _, new, kills = views_at_every_kill(
        tmp_path / "first",
        lambda d: None,
        lambda d: write_dir(d / "t", {"a": "1"}),
        lambda d: dir_view(d / "t"),
    )
    assert new == {"a": "1"} and kills and all(view is None for _, view in kills)

    target = tmp_path / "t"
    write_dir(target, {"a": "old"})
    with pytest.raises(Killed), killed_before(1):  # killed between the two renames
        write_dir(target, {"a": "new"})
    assert dir_view(target) == {"a": "old"} and not target.exists()
    write_dir(target, {"a": "newer"})  # the next write completes and removes the old copy
    assert dir_view(target) == {"a": "newer"} and not (tmp_path / "t.old").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["first", "t"]


def test_replace_dir_leaves_the_target_untouched_when_the_block_raises(tmp_path: Path) -> None:
    write_dir(tmp_path / "t", {"a": "old"})
    with pytest.raises(KeyboardInterrupt), replace_dir(tmp_path / "t") as tmp:
        (tmp / "a").write_text("partial")
        raise KeyboardInterrupt
    assert dir_view(tmp_path / "t") == {"a": "old"} and [p.name for p in tmp_path.iterdir()] == ["t"]


def test_create_dir_keeps_the_result_of_a_writer_that_finished_first(tmp_path: Path) -> None:
    target = tmp_path / "t"
    with create_dir(target) as tmp:
        (tmp / "a").write_text("ours")
        target.mkdir()
        (target / "a").write_text("theirs")  # another process finished meanwhile
    assert dir_view(target) == {"a": "theirs"} and [p.name for p in tmp_path.iterdir()] == ["t"]

    def create(d: Path) -> None:
        with create_dir(d / "t") as tmp:
            (tmp / "a").write_text("x")

    _, new, kills = views_at_every_kill(
        tmp_path / "kills", lambda d: None, create, lambda d: dir_view(d / "t")
    )
    assert new == {"a": "x"} and [view for _, view in kills] == [None]


# --- checkpoints --------------------------------------------------------------------------


class TinyNet(nn.Module):
    """One adapted projection: [N, 6] -> [N, 7]."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(6, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x)


def adapted(seed: int) -> nn.Module:
    torch.manual_seed(0)  # the same base model every time
    model = TinyNet()
    inject(model, FlexiLoraConfig(ranks=(0, 2, 4), alpha=4.0, target_modules=("q_proj",)))
    randomize_adapters(model, seed=seed)
    return model


def weights(model: nn.Module) -> tuple[bytes, ...]:
    return tuple(
        t.detach().numpy().tobytes() for _, layer in flexi_layers(model) for t in (layer.lora_A, layer.lora_B)
    )


def training_state(model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def save_at_step(out: Path, step: int) -> None:
    model = adapted(seed=step)
    optimizer, scheduler = training_state(model)
    save_checkpoint(
        out, model, TrainerState(step=step), optimizer, scheduler, router_state=f"router at {step}"
    )


def read_checkpoint(out: Path) -> tuple | None:
    """What ``train --resume`` restores: step, adapter weights, router state."""
    path = find_checkpoint(out)
    if path is None:
        return None
    model = adapted(seed=99)
    with torch.random.fork_rng(devices=[]):  # load_checkpoint restores the global RNGs
        state, router_state = load_checkpoint(path, model, *training_state(model))
    return state.step, weights(model), router_state


def test_checkpoint_save_killed_at_every_step_resumes_from_old_or_new(tmp_path: Path) -> None:
    old, new, kills = views_at_every_kill(
        tmp_path, lambda d: save_at_step(d, 1), lambda d: save_at_step(d, 2), read_checkpoint
    )
    assert old[0] == 1 and new[0] == 2 and old[2] == "router at 1" and new[2] == "router at 2"
    assert_old_or_new(old, new, kills, between=BETWEEN_THE_RENAMES.format(name="checkpoint"))


# --- adapters -----------------------------------------------------------------------------


def save_with_router(directory: Path, seed: int, router: bool) -> None:
    model = adapted(seed)
    if router:
        attach_router(model, ThresholdRouter((0, 2, 4), weights={"snr_db": -1.0}, thresholds=(-10.0, 0.0)))
    save_adapter(model, directory)


def read_adapter(directory: Path) -> tuple:
    torch.manual_seed(0)
    model = TinyNet()
    load_adapter(model, directory)
    router = get_state(model).router
    return weights(model), None if router is None else router.to_dict()


def test_adapter_save_killed_at_every_step_loads_old_or_new(tmp_path: Path) -> None:
    # The old adapter has a router, the new one none: a mix would pair new weights with the old router.
    old, new, kills = views_at_every_kill(
        tmp_path,
        lambda d: save_with_router(d / "adapter", 1, True),
        lambda d: save_with_router(d / "adapter", 2, False),
        lambda d: read_adapter(d / "adapter"),
    )
    assert old[1] is not None and new[1] is None
    assert_old_or_new(old, new, kills, between=BETWEEN_THE_RENAMES.format(name="adapter"))


def test_adapter_save_refuses_a_directory_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FlexispeechError, match="notes.txt"):
        save_adapter(adapted(1), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# --- the model-conversion cache -----------------------------------------------------------


def convert_to(text: str):
    def convert(out: Path) -> None:
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "model.txt").write_text(text)

    return convert


def test_conversion_cache_replaced_at_every_step_serves_old_or_new(tmp_path: Path, monkeypatch) -> None:
    """A replacement of a cached conversion (``atomic_dir(overwrite=True)``), killed before
    each step: the cache lookup serves the old or the new model, and never converts again."""

    def use_cache(d: Path) -> None:
        monkeypatch.setenv("FLEXISPEECH_CACHE", str(d))

    def lookup(d: Path) -> str:
        use_cache(d)
        out = sources._convert_once("m", convert_to("converted again"))
        return (out / "model.txt").read_text()

    def make_old(d: Path) -> None:
        use_cache(d)
        sources._convert_once("m", convert_to("old"))

    def write(d: Path) -> None:
        use_cache(d)
        convert_to("new")(d / "models" / "m")

    old, new, kills = views_at_every_kill(tmp_path, make_old, write, lookup)
    assert (old, new) == ("old", "new")
    assert_old_or_new(old, new, kills, between=BETWEEN_THE_RENAMES.format(name="m"))


def test_conversion_cache_first_conversion_killed_leaves_nothing_complete(tmp_path: Path) -> None:
    def convert(d: Path) -> None:
        with atomic_dir(d / "m") as tmp:
            (tmp / "model.txt").write_text("x")

    def read(d: Path) -> bool:
        return (d / "m" / COMPLETE_MARKER).is_file()

    _, new, kills = views_at_every_kill(tmp_path, lambda d: None, convert, read)
    assert new is True and kills and not any(view for _, view in kills)
