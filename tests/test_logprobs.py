"""The optimized forward (completion-only head, prefix sharing, chunking) against its plain twins."""

from dataclasses import dataclass

import pytest
import torch
from tinymodels import plain_pair_logps, random_pairs, tiny_llama

from alignkit.data.collate import collate_pairs, collate_single
from alignkit.logprobs import completion_logps, plain_completion_logps


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("shared", [True, False])
def test_pair_logps_equal_plain_forward(attn, shared):
    model = tiny_llama(attn=attn)
    pairs = random_pairs()
    want, want_n = plain_pair_logps(model, pairs)
    with torch.no_grad():
        got, n = completion_logps(model, collate_pairs(pairs, 0, shared=shared))
    assert torch.equal(n, want_n)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_chunked_head_equals_one_chunk_with_gradients():
    model = tiny_llama(attn="sdpa")
    batch = collate_pairs(random_pairs(seed=1), 0)
    a, _ = completion_logps(model, batch, chunk=3)
    ga = torch.autograd.grad(a.sum(), list(model.parameters()))
    b, _ = completion_logps(model, batch, chunk=10_000)
    gb = torch.autograd.grad(b.sum(), list(model.parameters()))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_shared_layout_has_less_padding_and_fewer_tokens():
    pairs = random_pairs(8, seed=2)
    shared = collate_pairs(pairs, 0, shared=True)
    separate = collate_pairs(pairs, 0, shared=False)
    prompt = sum(len(p.prompt_ids) for p in pairs)
    assert separate.n_tokens - shared.n_tokens == prompt  # the prompt is computed once, not twice
    assert shared.targets.tolist() == separate.targets.tolist()


def test_single_layout_matches_plain():
    @dataclass
    class S:
        prompt_ids: list
        completion_ids: list

    model = tiny_llama()
    items = [S(p.prompt_ids, p.chosen_ids) for p in random_pairs(seed=3)]
    L = max(len(s.prompt_ids) + len(s.completion_ids) for s in items)
    ids = torch.tensor([s.prompt_ids + s.completion_ids + [0] * (L - len(s.prompt_ids) - len(s.completion_ids)) for s in items])
    att = (torch.arange(L)[None] < torch.tensor([[len(s.prompt_ids) + len(s.completion_ids)] for s in items])).long()
    cm = torch.tensor([[0] * len(s.prompt_ids) + [1] * len(s.completion_ids) + [0] * (L - len(s.prompt_ids) - len(s.completion_ids)) for s in items])
    want, _ = plain_completion_logps(model, ids, att, cm)
    with torch.no_grad():
        got, _ = completion_logps(model, collate_single(items, 0))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
