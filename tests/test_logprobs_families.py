"""Our completion log-probs (decoder + completion-only head, prefix-shared or plain rows) against the
model's own forward (`plain_completion_logps`: `model(...).logits`) on tiny random configs of every
decoder family LoRA targets: soft-capped / scaled logits and sliding windows shorter than the rows."""


import pytest
import torch
from tinymodels import plain_pair_logps, random_pairs

from alignkit.data.collate import collate_pairs, collate_single
from alignkit.errors import UserError
from alignkit.logprobs import completion_logps, pair_logps_table

VOCAB = 128
WINDOW = 6  # shorter than every row below (prompts 8-13 tokens + completions 3-8)
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _family(name: str):
    import transformers as T

    if name == "llama":
        return T.LlamaConfig(**COMMON), T.LlamaForCausalLM
    if name == "mistral":
        return T.MistralConfig(**COMMON, sliding_window=WINDOW), T.MistralForCausalLM
    if name == "qwen2":
        return T.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1), \
            T.Qwen2ForCausalLM
    if name == "qwen3":
        return T.Qwen3Config(**COMMON, head_dim=8, use_sliding_window=True, sliding_window=WINDOW,
                             max_window_layers=1), T.Qwen3ForCausalLM
    if name == "gemma2":  # layer 0 local (sliding), layer 1 global; logits soft-capped at 2 (real: 30)
        return T.Gemma2Config(**COMMON, head_dim=8, sliding_window=WINDOW, final_logit_softcapping=2.0,
                              attn_logit_softcapping=5.0), T.Gemma2ForCausalLM
    if name == "gemma3":
        return T.Gemma3TextConfig(**COMMON, head_dim=8, sliding_window=WINDOW, final_logit_softcapping=2.0,
                                  layer_types=["sliding_attention", "full_attention"]), T.Gemma3ForCausalLM
    if name == "phi3":
        return T.Phi3Config(**COMMON, sliding_window=WINDOW), T.Phi3ForCausalLM
    if name == "gpt2":
        return T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2), T.GPT2LMHeadModel
    if name == "granite":
        return T.GraniteConfig(**COMMON, logits_scaling=4.0), T.GraniteForCausalLM
    if name == "cohere":
        return T.CohereConfig(**COMMON, logit_scale=0.5), T.CohereForCausalLM
    raise KeyError(name)


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2", "granite", "cohere"]
NO_SDPA = {"gemma2"}  # transformers: sdpa cannot soft-cap attention scores


def build(name: str, attn: str = "eager"):
    cfg, cls = _family(name)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with torch.no_grad():  # random weights at init scale give near-uniform logits: sharpen them so that
        model.get_output_embeddings().weight.mul_(20.0)  # soft-capping and scaling change the numbers
    return model


def _pairs(n=3, seed=0):
    return random_pairs(n, seed, vocab=VOCAB, prompt=(8, 14), answer=(3, 8))


CASES = [(f, a) for f in FAMILIES for a in ("eager", "sdpa") if not (a == "sdpa" and f in NO_SDPA)]


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "plain"])
@pytest.mark.parametrize("family,attn", CASES)
def test_completion_logps_equal_the_models_own_logits(family, attn, shared):
    model = build(family, attn)
    pairs = _pairs()
    want, want_n = plain_pair_logps(model, pairs)
    with torch.no_grad():
        got, n = completion_logps(model, collate_pairs(pairs, 0, shared=shared))
    assert torch.equal(n, want_n)
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_single_layout_and_table_equal_the_models_own_logits(family):
    model = build(family)
    pairs = _pairs(seed=1)
    want, _ = plain_pair_logps(model, pairs)
    items = [type("S", (), dict(prompt_ids=p.prompt_ids, completion_ids=c))
             for p in pairs for c in (p.chosen_ids, p.rejected_ids)]
    with torch.no_grad():
        single, _ = completion_logps(model, collate_single(items, 0))
    assert (single - want).abs().max().item() <= 1e-4
    for shared in (True, False):
        table = pair_logps_table(model, pairs, 0, batch_size=2, shared=shared)
        assert (table.reshape(-1) - want).abs().max().item() <= 1e-4


def test_the_window_and_the_transform_matter_here():
    """The cases above would pass without a fix if the tiny configs never hit the window or the cap."""
    from alignkit.logprobs import _parts

    model = build("gemma2")
    pairs = _pairs()
    batch = collate_pairs(pairs, 0, shared=False)
    decoder, head = _parts(model)
    with torch.no_grad():
        hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.padding_mask).last_hidden_state
        raw = head(hidden[batch.rows, batch.cols]).float().log_softmax(-1)  # no soft-capping
        raw = raw.gather(-1, batch.targets[:, None]).squeeze(-1)
    uncapped = torch.zeros(batch.n_segments).index_add(0, batch.segments, raw)
    want, _ = plain_pair_logps(model, pairs)
    assert (uncapped - want).abs().max().item() > 0.1
    assert max(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs) > WINDOW + 4


def test_prefix_sharing_refused_where_no_custom_mask_can_serve():
    model = build("llama")
    model.config.layer_types = ["chunked_attention", "full_attention"]  # e.g. Llama 4's chunked layers
    with pytest.raises(UserError) as e, torch.no_grad():
        completion_logps(model, collate_pairs(_pairs(), 0, shared=True))
    assert "chunked_attention" in str(e.value)
    assert "train.prefix_sharing: false" in e.value.hint
