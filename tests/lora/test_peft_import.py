"""``from_peft``: a PEFT LoRA becomes a nested Flexi-LoRA adapter whose top rank is PEFT's
model (checked against ``peft.PeftModel``) and whose lower ranks are best truncations."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from lora_models import TinyNet, randomize_adapters
from peft import LoraConfig, PeftModel, get_peft_model

from flexispeech import FlexiLoraConfig, export_peft, inject, use_ranks
from flexispeech.errors import ConfigError, FlexispeechError
from flexispeech.lora import flexi_layers, from_peft
from flexispeech.lora.peft_import import default_ranks


def trained_peft(tmp_path, **lora) -> tuple[TinyNet, PeftModel]:
    """A base TinyNet and a PEFT LoRA on it with random non-zero A and B, saved to tmp_path/peft."""
    torch.manual_seed(0)
    base = TinyNet()
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(target_modules=["q_proj", "fc2"], **lora))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
    peft_model.save_pretrained(str(tmp_path / "peft"))
    return base, PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft")).eval()


@pytest.mark.parametrize(
    "lora",
    [
        {"r": 4, "lora_alpha": 8},
        {"r": 4, "lora_alpha": 3, "use_rslora": True},
        {"r": 4, "lora_alpha": 8, "rank_pattern": {"fc2": 2}, "alpha_pattern": {"fc2": 5}},
    ],
    ids=["standard", "rslora", "patterns"],
)
def test_top_rank_reproduces_peft_model(tmp_path, lora: dict) -> None:
    base, peft_model = trained_peft(tmp_path, **lora)
    model = from_peft(base, tmp_path / "peft")
    assert get_ranks(model) == (0, 2, 4)
    x = torch.randn(3, 5, 6)
    with torch.no_grad():
        expected = peft_model(x)
        with use_ranks(model, 4):
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        with use_ranks(model, 2):  # a truncation is a different model
            assert not torch.allclose(model(x), expected, atol=1e-3)


def get_ranks(model) -> tuple[int, ...]:
    return flexi_layers(model)[0][1].config.ranks


def test_lower_ranks_are_the_best_truncations(tmp_path) -> None:
    """At every rank k, each layer's update is the SVD truncation of PEFT's update, whose
    error is the norm of the dropped singular values (Eckart-Young)."""
    base, peft_model = trained_peft(tmp_path, r=4, lora_alpha=8)
    model = from_peft(base, tmp_path / "peft", ranks=(0, 1, 2, 3, 4))
    peft_layers = {
        n.removeprefix("base_model.model."): m
        for n, m in peft_model.named_modules()
        if hasattr(m, "get_delta_weight")
    }
    for name, layer in flexi_layers(model):
        delta = peft_layers[name].get_delta_weight("default").detach().double()
        s = torch.linalg.svdvals(delta)
        for k in (1, 2, 3, 4):
            err = torch.linalg.matrix_norm(layer.delta_weight(k).detach().double() - delta)
            assert float(err) == pytest.approx(float(s[k:].norm()), rel=1e-4, abs=1e-5), (name, k)


def test_extra_ranks_above_peft_start_as_fresh_lora(tmp_path) -> None:
    base, peft_model = trained_peft(tmp_path, r=4, lora_alpha=8)
    model = from_peft(base, tmp_path / "peft", ranks=(0, 4, 8))
    x = torch.randn(2, 3, 6)
    with torch.no_grad(), use_ranks(model, 8):
        torch.testing.assert_close(model(x), peft_model(x), rtol=1e-5, atol=1e-5)
    for _, layer in flexi_layers(model):
        assert torch.count_nonzero(layer.lora_B[:, 4:]) == 0
        assert torch.count_nonzero(layer.lora_A[4:]) > 0  # trainable: gradients reach B


def test_round_trip_through_export_peft(tmp_path) -> None:
    """A Flexi-LoRA adapter exported to PEFT at rank 4 and imported back is that rank."""
    torch.manual_seed(0)
    net = TinyNet()
    inject(net, FlexiLoraConfig(ranks=(0, 2, 4), alpha=4.0, target_modules=("q_proj", "fc2")))
    randomize_adapters(net)
    export_peft(net, tmp_path / "peft", 4)
    base = TinyNet()
    base.load_state_dict(
        {k.replace(".base_layer", ""): v for k, v in net.state_dict().items() if "lora_" not in k}
    )
    model = from_peft(base, tmp_path / "peft")
    x = torch.randn(2, 3, 6)
    with torch.no_grad(), use_ranks(model, 4), use_ranks(net, 4):
        torch.testing.assert_close(model(x), net(x), rtol=1e-5, atol=1e-5)


def test_default_ranks() -> None:
    assert default_ranks(16) == (0, 2, 4, 8, 16)
    assert default_ranks(12) == (0, 3, 6, 12)
    assert default_ranks(1) == (0, 1)


def test_bad_adapters_are_one_clear_error(tmp_path) -> None:
    base, _ = trained_peft(tmp_path, r=4, lora_alpha=8)
    with pytest.raises(ConfigError, match="must be >= the PEFT rank 4"):
        from_peft(copy.deepcopy(base), tmp_path / "peft", ranks=(0, 2))
    config_path = tmp_path / "peft" / "adapter_config.json"
    data = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**data, "use_dora": True}))
    with pytest.raises(ConfigError, match="use_dora"):
        from_peft(copy.deepcopy(base), tmp_path / "peft")
    config_path.write_text(json.dumps(data))

    class Wider(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = torch.nn.Linear(6, 9)
            self.fc2 = torch.nn.Linear(9, 5)

    wider = Wider()
    with pytest.raises(FlexispeechError, match="another base model"):
        from_peft(wider, tmp_path / "peft")
    assert (
        type(wider.q_proj) is torch.nn.Linear
    )  # nothing injected: a retry says the same, not "not linear layers"
    with pytest.raises(FlexispeechError, match=r"is \[\d+ x \d+\] in the adapter but"):
        from_peft(wider, tmp_path / "peft")
    with pytest.raises(FlexispeechError, match="not a PEFT adapter"):
        from_peft(TinyNet(), tmp_path)
    flexi = TinyNet()
    inject(flexi, FlexiLoraConfig(ranks=(0, 4), target_modules=("q_proj",)))
    from flexispeech import save_adapter

    save_adapter(flexi, tmp_path / "flexi")
    with pytest.raises(ConfigError, match="a flexispeech adapter: load it with flexispeech.load_adapter"):
        from_peft(TinyNet(), tmp_path / "flexi")
