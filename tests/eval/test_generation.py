"""Batched, left-padded generation equals one-prompt-at-a-time greedy generation."""

from __future__ import annotations

import string

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from alignkit.errors import UserError
from alignkit.eval.generation import cut_at_stop, encode_prompts, generate, generate_ids

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character plus ChatML specials: a chat tokenizer built offline (98 tokens)."""
    vocab = {t: i for i, t in enumerate(["<pad>", "<|im_start|>", "<|im_end|>", *string.printable[:95], "\n"])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    return tok


def tiny_model(vocab: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


CONVS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "List three prime numbers"}],
    [{"role": "user", "content": "How do I kill a python process?"}],
    [{"role": "user", "content": "x"}],
    [{"role": "user", "content": "Write the JSON for a GET /users call with a limit of 10 please"}],
]


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(len(tok))


def test_batched_left_padded_equals_one_by_one(model, tok):
    batched = generate_ids(model, tok, encode_prompts(tok, CONVS), max_new_tokens=12, batch_size=3)
    for conv, got in zip(CONVS, batched, strict=True):
        # The plain twin: one prompt, no padding, straight model.generate.
        ids = torch.tensor([encode_prompts(tok, [conv])[0]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                             do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        assert got == cut_at_stop(out[0, ids.shape[1]:].tolist(), [tok.eos_token_id])
    texts = generate(model, tok, CONVS, max_new_tokens=12, batch_size=3)
    assert texts == generate(model, tok, CONVS, max_new_tokens=12, batch_size=1)
    assert texts == [tok.decode(c, skip_special_tokens=True).strip() for c in batched]


def test_state_restored_and_tokenizer_untouched(model, tok):
    tok.padding_side = "right"
    model.train()
    generate(model, tok, CONVS[:2], max_new_tokens=3)
    assert tok.padding_side == "right"
    assert model.training
    model.eval()


def test_stops_at_eos_and_decodes_without_specials(tok):
    model = tiny_model(len(tok))
    boost = torch.zeros(len(tok))
    boost[tok.eos_token_id] = 100.0  # EOS becomes the greedy choice from the first step
    model.lm_head.register_forward_hook(lambda mod, inp, out: out + boost)
    ids = generate_ids(model, tok, encode_prompts(tok, CONVS[:2]), max_new_tokens=8)
    assert all(c[-1] == tok.eos_token_id and len(c) <= 8 for c in ids)
    assert all("<|im_end|>" not in t for t in generate(model, tok, CONVS[:2], max_new_tokens=8))


def test_sampling_reproducible_from_seed(model, tok):
    a = generate(model, tok, CONVS, max_new_tokens=10, do_sample=True, seed=1)
    b = generate(model, tok, CONVS, max_new_tokens=10, do_sample=True, seed=1)
    c = generate(model, tok, CONVS, max_new_tokens=10, do_sample=True, seed=2)
    assert a == b and a != c


def test_no_pad_token_uses_eos(model):
    tok = char_tokenizer()
    tok.pad_token = None
    assert generate(model, tok, CONVS[:3], max_new_tokens=4) == generate(model, char_tokenizer(), CONVS[:3],
                                                                         max_new_tokens=4)


def test_missing_chat_template_is_a_user_error(model):
    tok = char_tokenizer()
    tok.chat_template = None
    with pytest.raises(UserError, match="chat template"):
        generate(model, tok, CONVS[:1])


def test_empty_and_cut():
    assert generate_ids(None, None, []) == []
    assert cut_at_stop([5, 6, 2, 2, 0], [2]) == [5, 6, 2]


def test_progress_is_reported_per_batch(model, tok):
    calls = []
    with_progress = generate(model, tok, CONVS, max_new_tokens=4, batch_size=2,
                             progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 5), (2, 5), (4, 5), (5, 5)]  # a start signal, then one call per batch
    assert with_progress == generate(model, tok, CONVS, max_new_tokens=4, batch_size=2)  # answers unchanged


def test_progress_printer_prints_counts_and_eta():
    from alignkit.eval.generation import progress_printer

    now, lines = [0.0], []
    show = progress_printer(write=lines.append, clock=lambda: now[0])
    show("probes (before)", 0, 90)  # starts the clock, prints nothing
    now[0] = 10.0
    show("probes (before)", 32, 90)  # 10 s for 32 answers: 58 left at that rate -> 18 s
    now[0] = 30.0
    show("probes (before)", 90, 90)
    assert lines == ["probes (before): 32/90 answers, ETA 18s", "probes (before): 90/90 answers in 30s"]
