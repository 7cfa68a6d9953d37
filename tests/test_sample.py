"""The shared decode loop (`alignkit.sample`) against its plain twin, HF `model.generate`, and against
the distribution it claims to sample from."""

from __future__ import annotations

import collections

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tinymodels import save_tiny_checkpoint, tiny_llama

from alignkit.eval.generation import generate
from alignkit.sample import Samples, cut_at_stop, left_pad, sample, sample_texts

PAD = 0
LENGTHS = (5, 1, 9, 3, 12, 7, 2, 6)
N_NEW = 10


def prompts_of(lengths=LENGTHS, seed=1, vocab=128) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def lora_model(seed: int = 0):
    """A tiny llama with a LoRA adapter whose B matrices are non-zero, so the adapter changes outputs."""
    model = get_peft_model(tiny_llama(seed), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                        target_modules=["q_proj", "v_proj", "o_proj", "up_proj"]))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if "lora_B" in name:
                w.copy_(torch.randn(w.shape, generator=g) * 0.5)
    return model.eval()


def tiny_gpt2():
    """Learned absolute positions: the model where wrong position_ids under left padding show (RoPE
    only sees relative positions, so a Llama hides a constant shift)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2,
                     bos_token_id=1, eos_token_id=2, pad_token_id=PAD)
    return GPT2LMHeadModel(cfg).eval()


def hf_greedy(model, prompts, stop: int | None, n_new: int = N_NEW, batched: bool = False) -> list[list[int]]:
    """The plain twin: HF generate, one prompt at a time (no padding) or as one left-padded batch."""
    outs = []
    groups = [prompts] if batched else [[p] for p in prompts]
    for group in groups:
        ids, mask = left_pad(group, PAD, "cpu")
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False,
                             eos_token_id=stop, pad_token_id=PAD)
        outs += [row[ids.shape[1]:].tolist() for row in out]
    return [cut_at_stop(o, [stop]) if stop is not None else o for o in outs]


def pick_stop(greedy: list[list[int]]) -> int:
    """A token that greedy decoding produces in some rows but not all, and never as a row's first
    token: as a stop id, some rows then stop mid-way and others run to the limit."""
    rows_with = collections.Counter(t for g in greedy for t in set(g[1:]) - {g[0]})
    for t, n in rows_with.most_common():
        if n < len(greedy) and all(t not in g for g in greedy if t not in g[1:]):
            return t
    raise AssertionError("no usable stop token")


@pytest.fixture(scope="module")
def model():
    return tiny_llama(vocab=128)


@pytest.mark.parametrize("kind", ["plain", "lora", "gpt2"])
def test_greedy_equals_hf_generate(model, kind):
    m = {"plain": lambda: model, "lora": lora_model, "gpt2": tiny_gpt2}[kind]()
    prompts = prompts_of()
    free = hf_greedy(m, prompts, None)
    stop = pick_stop(free)
    unused = next(t for t in range(3, 128) if all(t not in f for f in free))  # a second stop id, never hit
    got = sample(m, prompts, stop_ids=[stop, unused], pad_id=PAD, max_new_tokens=N_NEW, do_sample=False,
                 batch_size=3)
    ended = [stop in f for f in free]
    assert 0 < sum(ended) < len(prompts)  # some rows stop, some run to the limit
    assert got.completion_ids == hf_greedy(m, prompts, stop)
    assert got.completion_ids == hf_greedy(m, prompts, stop, batched=True)
    if kind == "lora":  # the adapter is live in the loop: the base model answers differently
        assert got.completion_ids != sample(model, prompts, stop_ids=[stop], pad_id=PAD, max_new_tokens=N_NEW,
                                            do_sample=False).completion_ids


def test_rows_stop_at_their_own_stop_token(model):
    prompts = prompts_of()
    free = hf_greedy(model, prompts, None)
    stop = pick_stop(free)
    got = sample(model, prompts, stop_ids=[stop], pad_id=PAD, max_new_tokens=N_NEW, do_sample=False)
    assert isinstance(got, Samples)
    assert got.prompt_ids == prompts and got.prompt_index == list(range(len(prompts)))
    for f, c, e in zip(free, got.completion_ids, got.ended, strict=True):
        if stop in f:  # cut right after the first stop token, which is kept
            assert e and c == f[:f.index(stop) + 1] and c[-1] == stop
        else:
            assert not e and c == f and len(c) == N_NEW


def test_finished_rows_leave_the_batch_and_loop_exits_when_all_stop(model):
    prompts = prompts_of((4, 6))
    free = hf_greedy(model, prompts, None)
    stop = free[0][1]  # prompt 0 stops at step 2, prompt 1 never
    assert free[0].index(stop) == 1 and stop not in free[1]
    seen = []
    hook = model.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["input_ids"].clone()),
                                           with_kwargs=True)
    try:
        got = sample(model, prompts, stop_ids=[stop], pad_id=PAD, max_new_tokens=N_NEW, do_sample=False)
        assert got.completion_ids == [free[0][:2], free[1]] and len(seen) == N_NEW
        # The prompts (longest first: prompt 1 is row 0) went through the decoder alone; the
        # whole model first sees their last column, then one token per live row.
        assert seen[0].tolist() == [[prompts[1][-1]], [prompts[0][-1]]]
        assert seen[1].tolist() == [[free[1][0]], [free[0][0]]]
        # Prompt 0 stopped at step 2: from step 3 only prompt 1's row is fed (and its cache kept).
        assert [step.tolist() for step in seen[2:]] == [[[t]] for t in free[1][1:N_NEW - 1]]
        seen.clear()
        sample(model, prompts, stop_ids=[free[0][0], free[1][0]], pad_id=PAD, max_new_tokens=N_NEW,
               do_sample=False)
        assert len(seen) == 1  # every row stopped at the first token: no second forward
    finally:
        hook.remove()


def test_sampling_reproducible_and_global_rng_untouched(model):
    prompts = prompts_of()
    kw = dict(stop_ids=[2], pad_id=PAD, max_new_tokens=6, do_sample=True, batch_size=4)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = sample(model, prompts, seed=7, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    assert a == sample(model, prompts, seed=7, **kw)
    assert a.completion_ids != sample(model, prompts, seed=8, **kw).completion_ids


def test_num_samples_order_and_prompt_index(model):
    prompts = prompts_of((3, 8))
    got = sample(model, prompts, stop_ids=[2], pad_id=PAD, max_new_tokens=5, num_samples=3, batch_size=4)
    assert got.prompt_index == [0, 0, 0, 1, 1, 1]
    assert got.prompt_ids == [prompts[0]] * 3 + [prompts[1]] * 3
    assert len(set(map(tuple, got.completion_ids[:3]))) > 1  # independent draws, not one copied
    # Each row is a draw for its own prompt: greedy rows equal that prompt's greedy answer.
    greedy = sample(model, prompts, stop_ids=[2], pad_id=PAD, max_new_tokens=5, num_samples=3,
                    do_sample=False)
    ref = hf_greedy(model, prompts, 2, n_new=5)
    assert greedy.completion_ids == [ref[0]] * 3 + [ref[1]] * 3


def test_tiny_temperature_is_greedy(model):
    prompts = prompts_of()
    kw = dict(stop_ids=[2], pad_id=PAD, max_new_tokens=N_NEW)
    assert (sample(model, prompts, do_sample=True, temperature=1e-6, seed=3, **kw).completion_ids
            == sample(model, prompts, do_sample=False, **kw).completion_ids)


def test_first_token_distribution_is_softmax_over_temperature():
    """2000 one-token draws from one prompt: their frequencies match softmax(logits / T) (standard
    error <= 0.011 per token) and not softmax(logits), even when the checkpoint's generation config
    asks for top-k/top-p/penalties."""
    vocab, T, n = 16, 0.6, 2000
    m = tiny_llama(vocab=vocab)
    with torch.no_grad():
        m.lm_head.weight.mul_(15.0)  # logits with a spread of a few units: temperature matters
    m.generation_config.top_k, m.generation_config.top_p, m.generation_config.repetition_penalty = 2, 0.5, 3.0
    prompt = [5, 9, 3, 11]
    with torch.no_grad():
        logits = m(torch.tensor([prompt])).logits[0, -1].double()
    got = sample(m, [prompt], stop_ids=[2], pad_id=PAD, max_new_tokens=1, num_samples=n, batch_size=n, seed=0,
                 temperature=T)
    freq = torch.bincount(torch.tensor([c[0] for c in got.completion_ids]), minlength=vocab).double() / n
    want, plain = torch.softmax(logits / T, -1), torch.softmax(logits, -1)
    assert float((want - plain).abs().max()) > 0.1  # the check can tell the two apart
    assert float((freq - want).abs().max()) < 0.05
    chi2 = float(((freq - want) ** 2 / want).sum() * n)
    assert chi2 < 45.0  # 15 degrees of freedom: the 99.99th percentile is about 44


@pytest.mark.parametrize("kind", ["plain", "lora"])
def test_decode_dtype_copy_leaves_model_alone(model, kind):
    m = model if kind == "plain" else lora_model()
    prompts = prompts_of((5, 1, 9, 3, 12, 7, 2, 6, 4, 8, 10, 11))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    kw = dict(stop_ids=[2], pad_id=PAD, max_new_tokens=8, do_sample=False)
    half = sample(m, prompts, decode_dtype=torch.bfloat16, **kw).completion_ids
    assert m.training
    m.eval()
    after = m.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())
    full = sample(m, prompts, **kw).completion_ids
    agree = sum(h[:4] == f[:4] for h, f in zip(half, full, strict=True))
    assert agree >= 0.75 * len(prompts)
    if kind == "lora":  # the adapter was merged into the copy, not dropped...
        base = sample(model, prompts, **kw).completion_ids
        assert sum(h[:1] == b[:1] for h, b in zip(half, base, strict=True)) <= 0.25 * len(prompts)
        with m.disable_adapter():  # ...unless it is switched off (the reference), then it is dropped
            off = sample(m, prompts, decode_dtype=torch.bfloat16, **kw).completion_ids
        assert sum(o[:4] == b[:4] for o, b in zip(off, base, strict=True)) >= 0.75 * len(prompts)
        assert sample(m, prompts, **kw).completion_ids == full  # and is on again afterwards


def test_sample_texts_on_a_chat_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = save_tiny_checkpoint(tmp_path / "ckpt")
    m, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    convs = [[{"role": "user", "content": "hi"}], [{"role": "system", "content": "Be terse."},
                                                   {"role": "user", "content": "List three primes"}]]
    got, texts = sample_texts(m, tok, convs, max_new_tokens=6, do_sample=False)
    assert len(got.completion_ids) == 2 and all(0 < len(c) <= 6 for c in got.completion_ids)
    assert got.prompt_ids[0][-3:] == tok.encode("<|im_start|>assistant\n")[-3:]
    assert texts == [tok.decode(c, skip_special_tokens=True).strip() for c in got.completion_ids]
    assert texts == generate(m, tok, convs, max_new_tokens=6)


def test_edge_cases(model):
    assert sample(model, [], stop_ids=[2], pad_id=PAD, max_new_tokens=4) == Samples([], [], [], [])
    zero = sample(model, [[5, 6]], stop_ids=[2], pad_id=PAD, max_new_tokens=0)
    assert zero.completion_ids == [[]] and zero.ended == [False]
    with pytest.raises(ValueError, match="temperature"):
        sample(model, [[5]], stop_ids=[2], pad_id=PAD, max_new_tokens=2, temperature=0.0)
    with pytest.raises(ValueError, match="at least one token"):
        sample(model, [[5], []], stop_ids=[2], pad_id=PAD, max_new_tokens=2)


def test_merged_copy_in_the_models_own_dtype_never_writes_into_the_model(model):
    """PPO rollouts decode with the adapter merged into an fp32 copy of an fp32 policy. `.to(fp32)` of an
    fp32 tensor is the same storage, so without a real copy the merge W += BA lands in the policy (and in
    its adapter-off reference) at every step. The merged copy must compute what the model computes."""
    m = lora_model()
    prompts = prompts_of((5, 1, 9, 3, 12, 7, 2, 6, 4, 8, 10, 11))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    kw = dict(stop_ids=[2], pad_id=PAD, max_new_tokens=8, do_sample=False)
    merged = sample(m, prompts, decode_dtype=torch.float32, **kw).completion_ids
    after = m.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert merged == sample(m, prompts, **kw).completion_ids
