"""On a GPU, the host's work for the next training batch does not wait for the device.

A host sync (a blocking host-to-device copy, a read back to the host) between two steps
makes the host wait until the previous step's backward pass and optimizer step are done,
and the device then idles while the host augments and routes the next batch. These tests
run each piece of that host work under ``torch.cuda.set_sync_debug_mode("error")``, which
raises at any sync: the augmentation of a batch (``training.augmented.Augmenter``, both
resampling backends, after a first call has made its cached kernels), the per-rank loss
capture of a forward pass, a batch's rank mask and the nested rows' selection. CUDA only:
the CPU has no device to wait for. (benchmarks/augment_cost.py ``--loop`` measures what
the syncs cost.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from flexispeech.data.augment import AugmentConfig, step_generator
from flexispeech.lora.plans import make_plan
from flexispeech.lora.router import FixedRouter
from flexispeech.models.family import get_family
from flexispeech.models.random_init import random_whisper
from flexispeech.training.augmented import Augmenter
from flexispeech.training.batch import Batch, PlannedBatch
from flexispeech.training.nested import select_rows
from flexispeech.training.rank_losses import RankLosses, capture_row_losses

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@contextmanager
def no_host_sync() -> Iterator[None]:
    """Any host sync inside the block raises (the block starts with the device idle)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


class Split:
    """What ``Augmenter`` reads of a training split."""

    def __init__(self, texts: list[str]) -> None:
        self.rows = [{"text": t} for t in texts]

    def signals(self, i: int) -> dict[str, float]:
        return {"duration": 2.0}


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_augmenting_a_batch_does_not_wait_for_the_device(backend: str) -> None:
    """The gpu profile's augmentation (speed, reverberation, coloured noise, SpecAugment) and
    the device log-mel of a batch; "auto" takes torchaudio's resampler where it loads."""
    cfg = AugmentConfig(backend=backend, spec_augment=True, noise_prob=0.5, speed_prob=0.5, reverb_prob=0.5)
    texts = ["one two three", "four five", "six seven eight nine"]
    device = torch.device("cuda")
    family, processor = get_family("whisper"), random_whisper()[1]
    augmenter = Augmenter(
        cfg,
        family,
        processor,
        Split(texts),
        FixedRouter(4),
        device,  # type: ignore[arg-type]
    )
    audio = 0.1 * torch.randn(3, 32_000)
    labels = family.labels(processor, texts)  # as the loader's workers make them (AudioInputs)
    planned = PlannedBatch(
        Batch(
            [0, 1, 2],
            {},
            torch.full((3,), 4),
            torch.arange(3),
            {"audio": audio, "lengths": torch.full((3,), 32_000), "labels": labels},
        ),
        0,
        0,
        3,
        None,
    )
    augmenter(planned, step_generator(0, 0, device))  # the first call makes the cached kernels
    with no_host_sync():
        batch = augmenter(planned, step_generator(0, 1, device))
    assert batch.inputs["input_features"].device.type == "cuda"


class Head(nn.Module):
    """A forward pass with token labels and ``[B, L, V]`` logits, as Whisper's."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 11)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=self.proj(x))


def test_the_per_rank_loss_capture_does_not_wait_for_the_device() -> None:
    model = Head().cuda()
    x = torch.randn(3, 5, 8, device="cuda")
    labels = torch.randint(0, 11, (3, 5), device="cuda")
    labels[0, 3:] = -100
    losses = RankLosses()
    with no_host_sync():
        with capture_row_losses(model) as captured:
            model(x, labels=labels)
        losses.add(torch.tensor([0, 4, 4]), captured)
    by_rank = losses.mean_by_rank()  # reads back here, once: the values are the batch's
    nll = nn.functional.cross_entropy(
        model(x).logits.flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100
    )
    row = nll.view(3, 5).sum(1).double().cpu()
    assert by_rank["0"] == pytest.approx(float(row[0]) / 3, abs=1e-4)
    assert by_rank["4"] == pytest.approx(float(row[1] + row[2]) / 10, abs=1e-4)


def test_a_rank_mask_and_the_nested_rows_do_not_wait_for_the_device() -> None:
    plan = make_plan(torch.tensor([0, 2, 4, 4]))
    batch = {"a": torch.arange(8.0, device="cuda").view(4, 2), "b": torch.arange(4, device="cuda")}
    with no_host_sync():
        mask = plan.mask([0.0, 1.0, 2.0, 3.0, 4.0], torch.float32, torch.device("cuda"))
        table = plan.scale_tensor([0.0, 1.0, 2.0, 3.0, 4.0], torch.device("cuda"))
        rows = select_rows(batch, torch.tensor([3, 1]))
    assert mask.shape == (4, 4) and table.device.type == "cuda"
    assert rows["b"].tolist() == [3, 1] and rows["a"].tolist() == [[6.0, 7.0], [2.0, 3.0]]
