"""inject / remove / merge / use_ranks on whole models."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from lora_models import TinyNet, randomize_adapters
from torch import nn

import flexispeech
from flexispeech import (
    FlexiLoraConfig,
    FlexiLoraLinear,
    ThresholdRouter,
    attach_router,
    inject,
    merge,
    remove,
    use_ranks,
)
from flexispeech.errors import ConfigError, FlexispeechError
from flexispeech.lora import RankError, adapter_parameters, flexi_layers, set_compute_path, set_default_rank


def test_inject_targets_and_freezes(tiny: TinyNet) -> None:
    assert isinstance(tiny.q_proj, FlexiLoraLinear) and isinstance(tiny.fc2, FlexiLoraLinear)
    assert isinstance(tiny.head, nn.Linear) and not isinstance(tiny.head, FlexiLoraLinear)
    trainable = {n for n, p in tiny.named_parameters() if p.requires_grad}
    assert trainable == {"q_proj.lora_A", "q_proj.lora_B", "fc2.lora_A", "fc2.lora_B"}
    assert len(adapter_parameters(tiny)) == 4


def test_regex_targets_and_no_match_error() -> None:
    model = TinyNet()
    inject(model, FlexiLoraConfig(ranks=(2,), target_modules=r"(q_proj|head)"))
    assert isinstance(model.head, FlexiLoraLinear) and not isinstance(model.fc2, FlexiLoraLinear)
    with pytest.raises(ConfigError, match="matched no nn.Linear.*q_proj"):
        inject(TinyNet(), FlexiLoraConfig(ranks=(2,), target_modules=("nonexistent",)))
    with pytest.raises(FlexispeechError, match="already has"):
        inject(model, FlexiLoraConfig(ranks=(2,), target_modules=("fc2",)))


def test_remove_restores_base_bit_for_bit(config: FlexiLoraConfig) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    model.head.weight.requires_grad_(False)  # a flag the user set must survive
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 6)
    base_out = model(x)
    inject(model, config)
    randomize_adapters(model)
    with use_ranks(model, [4, 2]):
        assert not torch.equal(model(x), base_out)
    remove(model)
    assert all(type(m) is not FlexiLoraLinear for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model(x), base_out)
    assert model.head.weight.requires_grad is False and model.q_proj.weight.requires_grad is True


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_merge_equals_unmerged_at_rank(tiny: TinyNet, rank: int) -> None:
    x = torch.randn(3, 4, 6)
    with use_ranks(tiny, rank):
        expected = tiny(x)
    merge(tiny, rank)
    assert type(tiny.q_proj) is nn.Linear and type(tiny.fc2) is nn.Linear
    torch.testing.assert_close(tiny(x), expected, rtol=1e-5, atol=1e-5)


def test_rank_0_is_the_base_model_for_an_adapter_without_it() -> None:
    """Rank 0 is every adapter's (a novelty gate serves it to static adapters): under
    ``use_ranks``, merged for inference, or merged for good, it is the base model."""
    from flexispeech.lora import merge_for_inference, unmerge

    model = TinyNet()
    x = torch.randn(3, 4, 6)
    base_out = model(x)
    inject(model, FlexiLoraConfig(ranks=(4,), target_modules=("q_proj", "fc2")))
    randomize_adapters(model)
    assert not torch.equal(model(x), base_out)  # r_max by default
    with use_ranks(model, [0, 4, 0]):
        mixed = model(x)
    torch.testing.assert_close(mixed[[0, 2]], base_out[[0, 2]])
    merge_for_inference(model, 0)  # batches all at rank 0 take the merged (here: base) weight
    with use_ranks(model, 0):
        torch.testing.assert_close(model(x), base_out)
    unmerge(model)
    merge(model, 0)
    torch.testing.assert_close(model(x), base_out)


def test_merge_rejects_unknown_rank(tiny: TinyNet) -> None:
    with pytest.raises(RankError, match=r"rank\(s\) \[3\] not in the configured ranks"):
        merge(tiny, 3)


def test_per_example_independence(tiny: TinyNet) -> None:
    x = torch.randn(4, 3, 6)
    with use_ranks(tiny, [0, 1, 2, 4]):
        a = tiny(x)
    with use_ranks(tiny, [0, 4, 2, 1]):  # rows 1 and 3 change rank, rows 0 and 2 do not
        b = tiny(x)
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]], rtol=0, atol=1e-6)
    assert not torch.allclose(a[1], b[1]) and not torch.allclose(a[3], b[3])
    for n, r in enumerate([0, 1, 2, 4]):  # each row equals that row run alone at its rank
        with use_ranks(tiny, [r]):
            torch.testing.assert_close(tiny(x[n : n + 1])[0], a[n], rtol=1e-5, atol=1e-6)


def test_repeat_interleave_expansion_gets_each_examples_rank(tiny: TinyNet) -> None:
    x = torch.randn(2, 3, 6)
    with use_ranks(tiny, [1, 4]):
        alone = tiny(x)
        expanded = tiny(x.repeat_interleave(3, dim=0))  # as beam search with 3 beams
    for n in range(2):
        for k in range(3):
            torch.testing.assert_close(expanded[3 * n + k], alone[n], rtol=1e-5, atol=1e-6)


def test_ranks_do_not_leak_to_other_models_or_threads(config: FlexiLoraConfig) -> None:
    torch.manual_seed(0)
    first, second = TinyNet(), TinyNet()
    inject(first, config)
    inject(second, config)
    randomize_adapters(first)
    randomize_adapters(second)
    x = torch.randn(2, 3, 6)
    default_second = second(x)  # outside any block: r_max
    seen_in_thread = []
    with use_ranks(first, [0, 0]):
        assert torch.equal(second(x), default_second)
        thread = threading.Thread(target=lambda: seen_in_thread.append(first(x)))
        thread.start()
        thread.join()
        inside = first(x)
    with use_ranks(first, 4):
        at_r_max = first(x)
    torch.testing.assert_close(seen_in_thread[0], at_r_max)  # the other thread saw r_max
    with use_ranks(first, 0):
        torch.testing.assert_close(inside, first(x))


def test_nested_contexts_restore(tiny: TinyNet) -> None:
    x = torch.randn(1, 2, 6)
    with use_ranks(tiny, 1):
        outer = tiny(x)
        with use_ranks(tiny, 4):
            inner = tiny(x)
        torch.testing.assert_close(tiny(x), outer)
    assert not torch.allclose(inner, outer)


def test_use_ranks_validation(tiny: TinyNet) -> None:
    with pytest.raises(RankError, match=r"\[3\] not in"):
        with use_ranks(tiny, [1, 3]):
            pass
    with pytest.raises(RankError, match="integers"):
        with use_ranks(tiny, torch.tensor([1.0, 2.0])):
            pass
    with pytest.raises(FlexispeechError, match="no Flexi-LoRA adapter"):
        with use_ranks(TinyNet(), 1):
            pass


def test_set_default_rank(tiny: TinyNet) -> None:
    x = torch.randn(2, 3, 6)
    set_default_rank(tiny, 1)
    with use_ranks(tiny, 1):
        expected = tiny(x)
    torch.testing.assert_close(tiny(x), expected)


def test_deepcopy_keeps_adapters_and_separates_ranks(tiny: TinyNet) -> None:
    twin = copy.deepcopy(tiny)
    x = torch.randn(2, 3, 6)
    with use_ranks(tiny, 4):
        at_r_max = tiny(x)
    with use_ranks(tiny, [0, 0]):
        torch.testing.assert_close(twin(x), at_r_max)  # the copy has its own (empty) slot
        with use_ranks(twin, 1):
            at_1 = twin(x)
        assert not torch.allclose(tiny(x), at_1) and not torch.allclose(at_1, at_r_max)


def test_torch_compile_full_graph(tiny: TinyNet) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(tiny, fullgraph=True, backend="eager")
    x = torch.randn(3, 2, 6)
    for ranks in ([0, 1, 4], [4, 4, 2], [0, 0, 0]):
        with use_ranks(tiny, ranks):
            expected = tiny(x)
            torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-6)


def test_route_uses_the_attached_router(tiny: TinyNet) -> None:
    signals = {"snr_db": torch.tensor([30.0, 5.0, 15.0])}
    with pytest.raises(FlexispeechError, match="no router attached"):
        flexispeech.route(tiny, signals)
    attach_router(tiny, ThresholdRouter((1, 2, 4), weights={"snr_db": -1.0}, thresholds=(-20.0, -10.0)))
    assert flexispeech.route(tiny, signals).tolist() == [1, 4, 2]
    attach_router(tiny, ThresholdRouter((1, 4), weights={"snr_db": 1.0}, thresholds=(10.0,)))  # replaced
    assert flexispeech.route(tiny, signals).tolist() == [4, 1, 4]


@pytest.mark.parametrize("path", ["masked", "grouped", "segmented", "triton", "static"])
def test_set_compute_path_switches_every_layer_and_keeps_the_outputs(tiny: TinyNet, path: str) -> None:
    x = torch.randn(4, 3, 6)
    ranks = [4, 0, 2, 1]
    with use_ranks(tiny, ranks):
        expected = tiny(x)
    set_compute_path(tiny, path)
    assert [layer.compute_path for _, layer in flexi_layers(tiny)] == [path, path]
    with use_ranks(tiny, ranks):
        torch.testing.assert_close(tiny(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="compute path must be one of"):
        set_compute_path(tiny, "fastest")


def test_serving_router_is_one_chain_fixed_then_saved_then_top_rank() -> None:
    from flexispeech.lora.inject import serving_router

    model = TinyNet()
    assert serving_router(model) is None  # no adapter: the base model
    assert serving_router(model, 2) is None
    inject(model, FlexiLoraConfig(ranks=(0, 2, 4), target_modules=("q_proj", "fc2")))
    signals = {"snr_db": torch.tensor([30.0, 5.0, -5.0])}
    assert serving_router(model)(signals).tolist() == [4, 4, 4]  # no router: r_max
    assert serving_router(model, 2)(signals).tolist() == [2, 2, 2]  # a fixed rank wins
    with pytest.raises(RankError, match=r"\[3\]"):
        serving_router(model, 3)
    router = ThresholdRouter((0, 2, 4), weights={"snr_db": -1.0}, thresholds=(-20.0, 0.0))
    attach_router(model, router)
    assert serving_router(model) is router  # the adapter's router
    assert serving_router(model)(signals).tolist() == [0, 2, 4]
    assert serving_router(model, 0)(signals).tolist() == [0, 0, 0]


def test_torch_transformer_layers_run_their_adapters_in_eval_mode_too() -> None:
    """torch's nn.TransformerEncoderLayer reads linear1/linear2's weights directly on its
    eval-mode fast path, so an adapter there was skipped at inference (rank 16 gave the
    rank-0 output, the README's Quickstart model); and nn.MultiheadAttention's out_proj is
    never called as a module at all, so inject refuses it rather than train nothing."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dropout=0.0, batch_first=True)
    plain = copy.deepcopy(layer).eval()
    inject(layer, FlexiLoraConfig(ranks=(0, 4, 16), target_modules=("linear1", "linear2")))
    for _, flexi in flexi_layers(layer):
        nn.init.normal_(flexi.lora_B)
    x = torch.randn(3, 50, 64)
    with torch.no_grad():
        with use_ranks(layer.train(), [16, 0, 4]):
            trained_path = layer(x)
        with use_ranks(layer.eval(), [16, 0, 4]):
            served = layer(x)
        reference = plain(x)
    torch.testing.assert_close(served, trained_path, atol=1e-5, rtol=1e-5)
    assert (served[0] - reference[0]).abs().max() > 0.1  # rank 16 changes the output
    torch.testing.assert_close(served[1], reference[1], atol=1e-5, rtol=1e-5)  # rank 0 is the base
    with pytest.raises(ConfigError, match="never run"):
        inject(
            nn.TransformerEncoderLayer(64, 4, batch_first=True), FlexiLoraConfig(target_modules=("out_proj",))
        )
