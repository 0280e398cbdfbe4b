"""The causal-LM family on a tiny random Llama with a trained-on-the-fly BPE tokenizer."""

from __future__ import annotations

import copy

import pytest
import torch

from flexispeech import FlexiLoraConfig, inject, use_ranks
from flexispeech.models.causal_lm import FAMILY, end_token_id, render_prompt
from flexispeech.models.family import Example, get_family
from flexispeech.models.random_init import random_causal_lm, randomize_adapters

EXAMPLES = [
    Example(id="q1", prompt="what is two plus three", text="five"),
    Example(id="q2", prompt="say the fox", text="the quick brown fox"),
]


@pytest.fixture(scope="module")
def base():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a busy multi-core pool only adds spin-waits
    yield FAMILY.load("random:tiny")
    torch.set_num_threads(n)


def test_chat_and_plain_prompts(base) -> None:
    _, tok = base
    assert get_family("causal_lm") is FAMILY
    assert render_prompt(tok, "hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    _, plain = random_causal_lm(chat_template=False)
    assert render_prompt(plain, "hi") == "Question: hi\nAnswer:"
    batch = FAMILY.collate(plain, EXAMPLES[:1])
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert plain.decode(labelled) == " five<|endoftext|>"


def test_loss_masks_the_prompt_exactly(base) -> None:
    model, tok = base
    batch = FAMILY.collate(tok, EXAMPLES)
    for i, ex in enumerate(EXAMPLES):
        prompt = tok(render_prompt(tok, ex.prompt), add_special_tokens=False).input_ids
        answer = tok(ex.text, add_special_tokens=False).input_ids + [tok.eos_token_id]
        n = len(prompt) + len(answer)
        assert batch["input_ids"][i, :n].tolist() == prompt + answer
        assert batch["labels"][i, : len(prompt)].eq(-100).all()
        assert batch["labels"][i, len(prompt) : n].tolist() == answer
        assert batch["labels"][i, n:].eq(-100).all() and batch["attention_mask"][i, n:].eq(0).all()
    # by hand: mean over answer tokens of -log p(token | everything before it)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = torch.log_softmax(logits.float(), -1)
        terms = [
            -logp[i, t - 1, batch["input_ids"][i, t]]
            for i in range(2)
            for t in range(batch["input_ids"].shape[1])
            if batch["labels"][i, t] != -100
        ]
        expected = torch.stack(terms).mean()
        assert FAMILY.loss(model, batch).item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_runs_the_output_head_on_answer_positions_only(base) -> None:
    model, tok = copy.deepcopy(base)
    inject(model, FlexiLoraConfig(ranks=(2, 8), target_modules=FAMILY.default_targets))
    randomize_adapters(model, b_scale=0.3)
    batch = FAMILY.collate(tok, EXAMPLES)  # two prompts of different lengths
    seen: list[int] = []
    hook = model.lm_head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[1]))
    with use_ranks(model, [2, 8]):
        ours = FAMILY.loss(model, batch)
        ours.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad()
        hook.remove()
        full = model(**batch).loss  # transformers' own loss over full logits
        full.backward()
    first = int((batch["labels"] != -100).any(0).nonzero()[0])
    assert seen == [batch["input_ids"].shape[1] - first + 1]  # from the first answer-predicting position
    assert ours.item() == pytest.approx(full.item(), rel=1e-6)
    for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad]):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def test_generate_left_pads_and_follows_ranks(base) -> None:
    model, tok = copy.deepcopy(base)
    inject(model, FlexiLoraConfig(ranks=(0, 2, 8), target_modules=FAMILY.default_targets))
    randomize_adapters(model, b_scale=0.3)
    batch = FAMILY.collate(tok, EXAMPLES, train=False)
    assert batch["attention_mask"][:, -1].eq(1).all() and "labels" not in batch
    for beams in (1, 3):
        with use_ranks(model, [2, 8]):
            together = FAMILY.generate(model, tok, batch, num_beams=beams, max_new_tokens=6)
        alone = []
        for i, r in enumerate([2, 8]):
            with use_ranks(model, [r]):
                one = FAMILY.collate(tok, EXAMPLES[i : i + 1], train=False)
                alone += FAMILY.generate(model, tok, one, num_beams=beams, max_new_tokens=6)
        assert together == alone
    with use_ranks(model, [0, 0]):
        base_text = FAMILY.generate(model, tok, batch, max_new_tokens=6)
    assert base_text != together
    assert not any("<|im_start|>" in t or "user" in t for t in together)  # only the new text


def test_answers_end_with_the_chat_turn_end_whatever_eos_says(base) -> None:
    model, tok = copy.deepcopy(base)
    im_end, im_start = tok.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    assert end_token_id(tok) == im_end
    tok.eos_token = "<|im_start|>"  # as transformers 5.17 reads SmolLM2's GGUF
    assert end_token_id(tok) == im_end  # the template decides, not eos_token
    labels = FAMILY.collate(tok, EXAMPLES)["labels"]
    assert [row[row != -100][-1].item() for row in labels] == [im_end, im_end]
    _, plain = random_causal_lm(chat_template=False)
    assert end_token_id(plain) == plain.eos_token_id

    # generation stops at the turn end even when the model's own config names another token
    model.generation_config.eos_token_id = im_start
    seen: dict = {}
    generate = model.generate
    model.generate = lambda **kw: seen.update(kw) or generate(**kw)
    FAMILY.generate(model, tok, FAMILY.collate(tok, EXAMPLES, train=False), max_new_tokens=3)
    assert seen["eos_token_id"] == sorted({im_end, im_start})
    # the result is cached per tokenizer, but a swapped template is seen
    tok.chat_template = None
    assert end_token_id(tok) == im_start  # no template: the (changed) eos
