"""The graphed training step (``flexispeech.training.graphs``): when it is taken, the label
padding it relies on, and (on CUDA) replays equal to eager steps."""

from __future__ import annotations

import pytest
import torch

from flexispeech.lora import FlexiLoraConfig, adapter_parameters, inject, use_ranks
from flexispeech.lora.inject import set_static_path
from flexispeech.models.random_init import random_whisper, randomize_adapters
from flexispeech.models.whisper import WhisperFamily
from flexispeech.training.graphs import LABEL_BUCKETS, GraphedSteps, label_bucket, pad_labels, why_not_graphed

RANKS = (0, 2, 4, 8)


def test_graphs_are_taken_only_where_safe() -> None:
    cuda = torch.device("cuda")
    assert why_not_graphed(cuda, 1, 1, "no", True) is None
    assert "off" in why_not_graphed(cuda, 1, 1, "no", False)
    assert "cpu" in why_not_graphed(torch.device("cpu"), 1, 1, "no", True)
    assert "2 processes" in why_not_graphed(cuda, 2, 1, "no", True)
    assert "grad_accum=4" in why_not_graphed(cuda, 1, 4, "no", True)
    assert "bf16" in why_not_graphed(cuda, 1, 1, "bf16", True)
    assert "nested" in why_not_graphed(cuda, 1, 1, "no", True, nested_prob=0.5)
    assert "keep_base" in why_not_graphed(cuda, 1, 1, "no", True, keep_base_weight=0.1)


def test_label_buckets() -> None:
    assert [label_bucket(n) for n in (1, 32, 33, 448)] == [32, 32, 64, 448]
    assert label_bucket(500) == 500  # longer than every bucket: its own length
    labels = torch.tensor([[5, 6, -100], [7, 8, 9]])
    padded = pad_labels({"labels": labels, "num_frames": torch.tensor([3, 4])})
    assert padded["labels"].shape == (2, LABEL_BUCKETS[0]) and torch.equal(padded["labels"][:, :3], labels)
    assert (padded["labels"][:, 3:] == -100).all() and torch.equal(padded["num_frames"], torch.tensor([3, 4]))


def whisper_model() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    model, _ = random_whisper()
    inject(model, FlexiLoraConfig(ranks=RANKS, alpha=8.0, target_modules=("q_proj", "v_proj", "fc1", "fc2")))
    randomize_adapters(model)
    model.train()
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "input_features": torch.randn(3, 80, 3000, generator=gen),
        "labels": torch.randint(0, 200, (3, 10), generator=gen),
    }
    inputs["labels"][1, 6:] = -100  # a shorter utterance
    return model, inputs


def loss_and_grads(model: torch.nn.Module, inputs: dict[str, torch.Tensor], ranks: list[int]):
    params = adapter_parameters(model)
    for p in params:
        p.grad = None
    with use_ranks(model, ranks):
        loss = WhisperFamily().loss(model, inputs)
        loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]


def test_padding_labels_to_a_bucket_changes_neither_loss_nor_gradients() -> None:
    """What makes one graph per bucket exact: -100 columns add no loss, and the causal
    decoder's real positions do not see them (on the static path the graphs run)."""
    model, inputs = whisper_model()
    set_static_path(model)
    loss, grads = loss_and_grads(model, inputs, [8, 2, 0])
    padded = pad_labels(inputs)
    assert padded["labels"].shape[1] == 32
    loss_p, grads_p = loss_and_grads(model, padded, [8, 2, 0])
    torch.testing.assert_close(loss_p, loss, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads_p, grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_steps_equal_eager_steps_for_any_ranks_and_label_length() -> None:
    model, inputs = whisper_model()
    model.cuda()
    runner = GraphedSteps(model, WhisperFamily().loss, log=lambda _: None)
    short = {**inputs, "labels": inputs["labels"][:, :5]}
    for batch in (inputs, short, inputs):
        for ranks in ([8, 2, 0], [0, 0, 0], [4, 8, 8]):
            loss = runner.run(batch, torch.tensor(ranks))
            got = [p.grad.clone() for p in adapter_parameters(model)]
            exp_loss, exp = loss_and_grads(model, {k: v.cuda() for k, v in batch.items()}, ranks)
            torch.testing.assert_close(loss, exp_loss, rtol=1e-4, atol=1e-5)
            for g, e in zip(got, exp):
                torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-5)
    assert len(runner.graphs) == 1  # labels of 10 and 5 tokens share the 32-token bucket
