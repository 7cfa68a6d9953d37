"""KL(policy || reference): zero for equal models, exact against brute-force enumeration, peft path."""

from __future__ import annotations

import copy
import itertools
import string

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from alignkit.errors import UserError
from alignkit.eval.kl import estimate_kl, score_kl, summarize

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONVS = [[{"role": "user", "content": t}] for t in ("hi", "How do I kill a process?", "x", "List 3 primes")]


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["<pad>", "<|im_start|>", "<|im_end|>", *string.printable[:95], "\n"])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|im_end|>")
    tok.chat_template = CHATML
    return tok


def tiny_model(vocab: int, seed: int, eos: int = 2, init: float = 0.02) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, attn_implementation="eager",
                      eos_token_id=eos, bos_token_id=None, pad_token_id=None, initializer_range=init)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def test_zero_for_identical_models(tok):
    model = tiny_model(len(tok), seed=0)
    for reference in (model, copy.deepcopy(model)):
        out = estimate_kl(model, reference, tok, CONVS, n_samples=2, max_new_tokens=8, batch_size=3)
        assert abs(out["kl_per_sequence"]) <= 1e-6 and abs(out["kl_per_token"]) <= 1e-6
        assert abs(out["kl_sampled_per_sequence"]) <= 1e-6
        assert out["n_sequences"] == 8 and 8 <= out["n_tokens"] <= 64


def test_positive_when_models_differ(tok):
    policy, reference = tiny_model(len(tok), 0, init=0.2), tiny_model(len(tok), 1, init=0.2)
    out = estimate_kl(policy, reference, tok, CONVS, n_samples=2, max_new_tokens=8, batch_size=3)
    assert out["kl_per_sequence"] > 0.01 and out["kl_per_token"] > 0
    assert out["kl_per_sequence_stderr"] is not None


# ---- exact check on a 5-token vocabulary -------------------------------------------------------
V, EOS, L = 5, 4, 3


def trajectories():
    """Every answer that stops at EOS or after L tokens: 1 + 4 + 16 ending in EOS, 64 cut at L."""
    words = [t for t in range(V) if t != EOS]
    for k in range(L):
        yield from (list(w) + [EOS] for w in itertools.product(words, repeat=k))
    yield from (list(w) for w in itertools.product(words, repeat=L))


def seq_logprob(model, prompt, answer) -> float:
    """The plain twin: log p(answer | prompt) from one unpadded forward, in float64."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(answer))


def exact_expectations(policy, reference, prompt):
    """True sequence KL, and both estimators' expectations, by weighting every trajectory by pi(y|x)."""
    ys = list(trajectories())
    lp = torch.tensor([seq_logprob(policy, prompt, y) for y in ys], dtype=torch.float64)
    lq = torch.tensor([seq_logprob(reference, prompt, y) for y in ys], dtype=torch.float64)
    w = lp.exp()
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)  # the enumeration covers every answer
    scores = score_kl(policy, reference, [prompt] * len(ys), ys, batch_size=32)
    true_kl = float((w * (lp - lq)).sum())
    return true_kl, float((w * scores["kl"].double()).sum()), float((w * scores["kl_sampled"].double()).sum())


@pytest.mark.parametrize("prompt", [[0, 1, 2], [3]])
def test_full_vocab_estimator_is_exact_in_expectation(prompt):
    policy, reference = tiny_model(V, 0, eos=EOS, init=0.5), tiny_model(V, 1, eos=EOS, init=0.5)
    true_kl, full, sampled = exact_expectations(policy, reference, prompt)
    assert true_kl > 0.05  # a KL big enough that the comparison means something
    assert full == pytest.approx(true_kl, rel=1e-4, abs=1e-6)
    assert sampled == pytest.approx(true_kl, rel=1e-4, abs=1e-6)


class DigitTokenizer:
    """Stand-in chat tokenizer for the 5-token models: the user message is a string of token ids."""

    chat_template = "digits"
    eos_token_id = EOS
    pad_token_id = None

    def apply_chat_template(self, conv, add_generation_prompt=True, tokenize=True):
        return {"input_ids": [int(c) for c in conv[-1]["content"]]}


def test_sampling_path_converges_to_exact_kl():
    """Samples come from the plain policy distribution even when the checkpoint asks for top-k/top-p."""
    policy, reference = tiny_model(V, 0, eos=EOS, init=0.5), tiny_model(V, 1, eos=EOS, init=0.5)
    policy.generation_config.top_k, policy.generation_config.top_p = 1, 0.5
    true_kl, _, _ = exact_expectations(policy, reference, [0, 1, 2])
    conv = [[{"role": "user", "content": "012"}]]
    out = estimate_kl(policy, reference, DigitTokenizer(), conv, n_samples=1500, max_new_tokens=L,
                      batch_size=500, seed=3)
    assert abs(out["kl_per_sequence"] - true_kl) < 4 * out["kl_per_sequence_stderr"]


# ---- the LoRA reference path -------------------------------------------------------------------
def test_peft_disabled_adapter_equals_separate_base(tok):
    base = tiny_model(len(tok), 0, init=0.2)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    policy = get_peft_model(copy.deepcopy(base), lora)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        before = policy(ids).logits
    shared = estimate_kl(policy, None, tok, CONVS, n_samples=2, max_new_tokens=8, batch_size=3, seed=1)
    separate = estimate_kl(policy, tiny_model(len(tok), 0, init=0.2), tok, CONVS, n_samples=2,
                           max_new_tokens=8, batch_size=3, seed=1)
    assert shared["kl_per_sequence"] > 1e-3
    for key in ("kl_per_sequence", "kl_per_token", "kl_sampled_per_sequence"):
        assert shared[key] == pytest.approx(separate[key], rel=1e-5, abs=1e-6)
    with torch.no_grad():
        assert torch.equal(policy(ids).logits, before)  # the adapter is back on


def test_reference_none_needs_peft(tok):
    with pytest.raises(UserError, match="reference"):
        estimate_kl(tiny_model(len(tok), 0), None, tok, CONVS)


def test_summarize_by_hand_and_empty(tok):
    out = summarize({"kl": torch.tensor([1.0, 3.0]), "kl_sampled": torch.tensor([-1.0, 5.0]),
                     "n_tokens": torch.tensor([2, 6])})
    # per sequence: (1+3)/2 = 2; per token: 4/8 = 0.5; sampled: (-1+5)/2 = 2, 4/8 = 0.5
    # stderr: std([1, 3]) = sqrt(2), / sqrt(2) = 1
    assert out == {"kl_per_sequence": 2.0, "kl_per_token": 0.5, "kl_sampled_per_sequence": 2.0,
                   "kl_sampled_per_token": 0.5, "kl_per_sequence_stderr": pytest.approx(1.0),
                   "n_tokens": 8, "n_sequences": 2}
    empty = estimate_kl(tiny_model(len(tok), 0), None, tok, [])
    assert empty["kl_per_sequence"] is None and empty["n_tokens"] == 0
