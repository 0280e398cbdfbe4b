"""Adapter files: save/load round trip, mismatches, PEFT equivalence and export."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from lora_models import TinyNet, randomize_adapters
from torch import nn

from flexispeech import (
    FlexiLoraConfig,
    ThresholdRouter,
    attach_router,
    export_peft,
    inject,
    load_adapter,
    save_adapter,
    use_ranks,
)
from flexispeech.errors import FlexispeechError
from flexispeech.lora import get_router


def test_save_load_round_trip_with_router(tiny: TinyNet, tmp_path) -> None:
    router = ThresholdRouter((0, 1, 2, 4), weights={"snr_db": -1.0}, thresholds=(-20, -10, 0))
    attach_router(tiny, router)
    save_adapter(tiny, tmp_path / "adapter")
    names = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors", "router.json"]
    fresh = TinyNet()
    fresh.load_state_dict({k: v for k, v in tiny.state_dict().items() if "lora_" not in k}, strict=False)
    fresh.q_proj.load_state_dict(tiny.q_proj.base_layer.state_dict())
    fresh.fc2.load_state_dict(tiny.fc2.base_layer.state_dict())
    load_adapter(fresh, tmp_path / "adapter")
    x = torch.randn(3, 2, 6)
    for ranks in ([0, 1, 4], [2, 2, 2]):
        with use_ranks(tiny, ranks):
            expected = tiny(x)
        with use_ranks(fresh, ranks):
            assert torch.equal(fresh(x), expected)
    loaded = get_router(fresh)
    sig = {"snr_db": torch.tensor([30.0, 15.0, 5.0, -5.0])}
    assert torch.equal(loaded(sig), router(sig))


def test_load_into_other_base_names_the_shape(tiny: TinyNet, tmp_path) -> None:
    save_adapter(tiny, tmp_path / "a")

    class Wider(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = nn.Linear(6, 9)
            self.fc2 = nn.Linear(9, 5)

    with pytest.raises(
        FlexispeechError, match=r"q_proj.lora_B has shape \(7, 4\) but the model needs \(9, 4\)"
    ):
        load_adapter(Wider(), tmp_path / "a")
    with pytest.raises(FlexispeechError, match="not a flexispeech adapter"):
        load_adapter(TinyNet(), tmp_path)


def test_saved_config_is_readable_json(tiny: TinyNet, tmp_path) -> None:
    save_adapter(tiny, tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert data["config"]["ranks"] == [0, 1, 2, 4]
    assert data["layers"] == {"q_proj": [6, 7], "fc2": [7, 5]}
    assert FlexiLoraConfig.from_dict(data["config"]) == FlexiLoraConfig(
        ranks=(0, 1, 2, 4), alpha=4.0, target_modules=("q_proj", "fc2")
    )


def test_full_rank_equals_peft_lora_with_same_weights() -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = TinyNet()
    ours = copy.deepcopy(base)
    inject(ours, FlexiLoraConfig(ranks=(2, 4), alpha=8.0, target_modules=("q_proj", "fc2")))
    randomize_adapters(ours)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8.0, target_modules=["q_proj", "fc2"]))
    with torch.no_grad():
        for name in ("q_proj", "fc2"):
            layer = getattr(peft_model.base_model.model, name)
            layer.lora_A["default"].weight.copy_(getattr(ours, name).lora_A)
            layer.lora_B["default"].weight.copy_(getattr(ours, name).lora_B)
    x = torch.randn(3, 2, 6)
    with use_ranks(ours, 4):
        torch.testing.assert_close(ours(x), peft_model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rank", [1, 4])
def test_export_peft_round_trip(tiny: TinyNet, tmp_path, rank: int) -> None:
    from peft import PeftModel

    export_peft(tiny, tmp_path / "peft", rank)
    base = TinyNet()
    base.head.load_state_dict(tiny.head.state_dict())
    base.q_proj.load_state_dict(tiny.q_proj.base_layer.state_dict())
    base.fc2.load_state_dict(tiny.fc2.base_layer.state_dict())
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "peft"))
    x = torch.randn(2, 3, 6)
    with use_ranks(tiny, rank):
        torch.testing.assert_close(peft_model(x), tiny(x), rtol=1e-5, atol=1e-6)


def test_export_peft_on_a_transformers_whisper(tmp_path) -> None:
    from peft import PeftModel
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(
        vocab_size=64,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_mel_bins=8,
        max_source_positions=10,
        max_target_positions=12,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    torch.manual_seed(0)
    base = WhisperForConditionalGeneration(cfg).eval()
    ours = copy.deepcopy(base)
    inject(ours, FlexiLoraConfig(ranks=(0, 2, 8), alpha=16.0))
    randomize_adapters(ours)
    export_peft(ours, tmp_path, 8)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    feats = torch.randn(2, 8, 20)
    dec = torch.tensor([[1, 5, 6], [1, 7, 8]])
    with use_ranks(ours, 8):
        expected = ours(input_features=feats, decoder_input_ids=dec).logits
    got = peft_model(input_features=feats, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_rewriting_an_adapter_never_deletes_what_is_not_an_adapter_s(tiny: TinyNet, tmp_path) -> None:
    """``scale --out`` and ``gate --out`` rewrite an adapter into a directory that is
    replaced whole: one holding a user's files, or holding the adapter being read (its
    parent), is refused and left as it was; an adapter directory (or a new one) is written."""
    from flexispeech.lora.io import rewrite_adapter

    save_adapter(tiny, tmp_path / "run" / "adapter")
    (tmp_path / "run" / "train_log.jsonl").write_text("{}\n")
    user = tmp_path / "user"
    user.mkdir()
    (user / "important.txt").write_text("keep")
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    for out, reason in ((user, "not an adapter's"), (tmp_path / "run", "holds the adapter")):
        with pytest.raises(FlexispeechError, match=reason):
            rewrite_adapter(tmp_path / "run" / "adapter", out, {"adapter_config.json": config})
    assert (user / "important.txt").read_text() == "keep"
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "run" / "train_log.jsonl").is_file()
    new = rewrite_adapter(tmp_path / "run" / "adapter", tmp_path / "copy", {"adapter_config.json": config})
    assert sorted(p.name for p in new.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    rewrite_adapter(
        tmp_path / "run" / "adapter", new, {"adapter_config.json": config}
    )  # an adapter's own dir
    rewrite_adapter(new, new, {"adapter_config.json": config})  # in place


def test_a_load_that_cannot_be_whole_changes_nothing(
    tiny: TinyNet, config: FlexiLoraConfig, tmp_path
) -> None:
    """Loading into a model whose adapter has other scales kept those scales under the new
    weights; a load that failed on its second layer had copied the first; a failed load
    into a bare model left the adapter it injected behind."""
    from dataclasses import replace

    from flexispeech import remove
    from flexispeech.errors import ConfigError
    from flexispeech.lora import flexi_layers

    before = {name: layer.lora_A.clone() for name, layer in flexi_layers(tiny)}
    other = TinyNet()
    inject(other, replace(config, alpha=16.0))
    save_adapter(other, tmp_path / "alpha16")
    with pytest.raises(ConfigError, match="differs in alpha"):
        load_adapter(tiny, tmp_path / "alpha16")
    half = TinyNet()
    inject(half, replace(config, target_modules=("q_proj",)))
    save_adapter(half, tmp_path / "q_only")
    with pytest.raises(FlexispeechError, match="no weights for layer fc2"):
        load_adapter(tiny, tmp_path / "q_only")
    assert all(torch.equal(layer.lora_A, before[name]) for name, layer in flexi_layers(tiny))
    save_adapter(tiny, tmp_path / "both")
    bare = TinyNet()
    bare.fc2 = nn.Linear(7, 9)  # another base model: fc2's shapes differ
    with pytest.raises(FlexispeechError, match="fc2.lora_B has shape"):
        load_adapter(bare, tmp_path / "both")
    assert type(bare.q_proj) is nn.Linear and type(bare.fc2) is nn.Linear  # the adapter it injected is gone
    remove(tiny)


def test_export_peft_writes_over_nothing_but_an_earlier_peft_export(tiny: TinyNet, tmp_path) -> None:
    """Into a flexispeech adapter's folder it overwrote adapter_config.json and the weights
    with PEFT's; a user's folder got the export mixed in. An earlier export is replaced."""
    save_adapter(tiny, tmp_path / "adapter")
    before = (tmp_path / "adapter" / "adapter_config.json").read_text()
    with pytest.raises(FlexispeechError, match="not a PEFT LoRA export"):
        export_peft(tiny, tmp_path / "adapter", 2)
    assert (tmp_path / "adapter" / "adapter_config.json").read_text() == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FlexispeechError, match="notes.txt"):
        export_peft(tiny, tmp_path / "mine", 2)
    export_peft(tiny, tmp_path / "peft", 2)
    export_peft(tiny, tmp_path / "peft", 4)  # the earlier export is replaced
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 4
