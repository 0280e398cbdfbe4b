"""Text complexity signals: surface counts and prompt log-perplexity under a causal LM."""

from __future__ import annotations

import math

import pytest

from flexispeech.signals.text import prompt_perplexity, question_text, text_signals


def test_text_signals_counts():
    s = text_signals("Mia buys 3 pens at $1,250.50 each. What is 3 × 4 - 2?")
    assert s == {
        "n_words": 12.0,  # Mia buys 3 pens at $1,250.50 each. What is 3 4 2? (not × and -)
        "n_chars": 53.0,
        "n_digits": 10.0,
        "n_numbers": 5.0,  # 3, 1250.5, 3, 4, 2
        "n_operators": 3.0,  # "each", "×", "-"
        "n_sentences": 2.0,
        "n_question_words": 5.0,  # What is 3 4 2? (the last sentence)
    }


def test_question_words_read_the_question_not_the_passage():
    one_hop = (
        "Passage: Ardel Vosk is 41 years old. Vosk Labs is in Brenford.\nQuestion: How old is Ardel Vosk?"
    )
    three_hop = (
        "Passage: Ardel Vosk is 41.\nQuestion: What is the population of the town where the company "
        "that Ardel Vosk works for is headquartered?"
    )
    assert question_text(one_hop) == "How old is Ardel Vosk?"
    assert text_signals(one_hop)["n_question_words"] == 5.0
    assert text_signals(three_hop)["n_question_words"] == 17.0
    assert (
        question_text("Mira has 3 pens. She buys 2 more. How many pens does she have?")
        == "How many pens does she have"
    )  # split off its "?"
    assert question_text("question: first? QUESTION:  second one") == "second one"  # the last marker
    assert question_text("") == "" and text_signals("")["n_question_words"] == 0.0


def test_text_signals_operator_rules():
    assert text_signals("a well-known low-price deal")["n_operators"] == 0.0  # hyphens are not minus
    assert text_signals("a half-price deal")["n_operators"] == 1.0  # "half" inside a hyphenated word
    assert text_signals("40 km per hour, twice: 10% + 5 = 15")["n_operators"] == 5.0  # per twice % + =
    assert text_signals("It is -5 degrees")["n_operators"] == 1.0  # a leading minus counts
    assert text_signals("")["n_sentences"] == 0.0
    assert text_signals("No final stop")["n_sentences"] == 1.0
    assert text_signals("Pi is 3.14. Done!\nNext line")["n_sentences"] == 3.0


@pytest.fixture(scope="module")
def tiny_lm():
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = "<unk> <s> the cat sat on a mat 1 2 3 + = what is".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def _unbatched_nll(model, tokenizer, prompt):
    import torch

    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()


def test_prompt_perplexity_matches_unbatched(tiny_lm):
    model, tokenizer = tiny_lm
    prompts = [
        "the cat sat on a mat",
        "what is 1 + 2",
        "the cat",
        "1 2 3 = 3 2 1 the mat is a mat",
        "cat sat",
    ]
    batched = prompt_perplexity(model, tokenizer, prompts, batch_size=3)  # mixed lengths per batch
    expected = [_unbatched_nll(model, tokenizer, p) for p in prompts]
    assert batched == pytest.approx(expected, abs=1e-5)
    assert all(1.0 < v < 10.0 for v in batched)  # random init: near log(15) = 2.7
    assert prompt_perplexity(model, tokenizer, prompts, batch_size=1) == pytest.approx(expected, abs=1e-5)


def test_prompt_perplexity_single_token_is_nan(tiny_lm):
    model, tokenizer = tiny_lm
    [score] = prompt_perplexity(model, tokenizer, ["cat"])
    assert math.isnan(score)
    assert model.training is False
