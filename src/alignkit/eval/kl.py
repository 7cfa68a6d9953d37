"""KL(policy || reference) on probe prompts, from completions sampled from the policy.

For a prompt x the sequence KL is

    KL = E_{y ~ pi(.|x)} [ log pi(y|x) - log ref(y|x) ]
       = E_{y ~ pi} [ sum_t KL( pi(.|x, y<t) || ref(.|x, y<t) ) ]          (chain rule)

We report two Monte-Carlo estimates computed on the same sampled trajectories y:

- `kl_per_sequence` (full-vocabulary): at every generated position, the exact KL between the two
  next-token distributions, `sum_v p_v (log p_v - log q_v)`, summed along y. Its expectation is the
  sequence KL (the second line above), it is never negative, and its variance is much lower than the
  sampled log-ratio's because the inner expectation over each next token is done exactly.
- `kl_sampled_per_sequence`: the plain log-ratio `log pi(y|x) - log ref(y|x)` of the sampled tokens
  (the "k1" estimator). Also unbiased; a single sample can be negative.

Trajectories stop at the first end-of-sequence token (scored) or after `max_new_tokens`, so both
estimate the KL between the two distributions over such truncated answers. Sampling is plain
temperature-1 ancestral sampling: top-k/top-p from the checkpoint's generation config would make
the samples come from a different distribution than the one whose KL we report.

With `reference=None` the policy must be a peft model: the reference is the same model inside
`policy.disable_adapter()`, as in training (no second copy in memory).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from alignkit.errors import UserError
from alignkit.eval.generation import Conversation, encode_prompts, generate_ids


def _reference_context(policy, reference):
    """(model, context-manager factory) under which `model` computes the reference distribution."""
    if reference is not None:
        return reference, contextlib.nullcontext
    if not hasattr(policy, "disable_adapter"):
        raise UserError(
            "KL needs a reference model: none was given and the policy has no LoRA adapter to switch off",
            where="eval.kl_samples",
            hint="pass the reference model, use model.lora.enabled=true, or set eval.kl_samples=0",
        )
    return policy, policy.disable_adapter


def _layout(prompts, completions, device):
    """Rows `[pad.., prompt, completion, pad..]`: every completion starts at the same column P.

    Returns input_ids (b, P+N), attention_mask (b, P+N), position_ids (b, P+N), completion_mask (b, N).
    A shared start column lets the LM head run only on the last N+1 positions (`logits_to_keep`).
    The pad id is 0: padded positions are masked and never scored.
    """
    p_width = max(len(p) for p in prompts)
    n_width = max(1, max(len(c) for c in completions))
    b = len(prompts)
    ids = torch.zeros((b, p_width + n_width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        seq = list(p) + list(c)
        start = p_width - len(p)
        ids[row, start:start + len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, start:start + len(seq)] = 1
    # Positions count real tokens only, as `generate` does for left-padded prompts.
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    comp_mask = mask[:, p_width:].bool()
    return ids.to(device), mask.to(device), pos.to(device), comp_mask.to(device)


def _next_token_logits(model, ids, mask, pos, n_width: int) -> torch.Tensor:
    """Logits (b, N, v) predicting each of the last N tokens."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                logits_to_keep=n_width + 1)
    # Slicing from the end works whether or not the model honoured logits_to_keep.
    return out.logits[:, -(n_width + 1):-1].float()


def score_kl(policy, reference, prompt_ids: Sequence[Sequence[int]],
             completion_ids: Sequence[Sequence[int]], *, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Per-sequence KL terms for given completions (already cut after their stop token).

    Returns tensors of shape (n,) on the CPU: `kl` (full-vocabulary sum along the completion),
    `kl_sampled` (log pi(y|x) - log ref(y|x)), `n_tokens` (completion length).
    """
    ref_model, ref_ctx = _reference_context(policy, reference)
    device = next(policy.parameters()).device
    kl, kl_sampled, n_tokens = [], [], []
    was_training = policy.training, ref_model.training
    policy.eval()
    ref_model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(prompt_ids), batch_size):
                ids, mask, pos, comp_mask = _layout(prompt_ids[start:start + batch_size],
                                                    completion_ids[start:start + batch_size], device)
                n_width = comp_mask.shape[1]
                logp = F.log_softmax(_next_token_logits(policy, ids, mask, pos, n_width), dim=-1)
                with ref_ctx():
                    logq = F.log_softmax(_next_token_logits(ref_model, ids, mask, pos, n_width), dim=-1)
                per_pos = (logp.exp() * (logp - logq)).sum(-1)  # (b, N)
                target = ids[:, -n_width:].unsqueeze(-1)
                ratio = (logp.gather(-1, target) - logq.gather(-1, target)).squeeze(-1)  # (b, N)
                # where, not a product: padded positions must not leak a NaN/inf into the sums
                kl.append(torch.where(comp_mask, per_pos, 0.0).sum(-1).cpu())
                kl_sampled.append(torch.where(comp_mask, ratio, 0.0).sum(-1).cpu())
                n_tokens.append(comp_mask.sum(-1).cpu())
    finally:
        policy.train(was_training[0])
        ref_model.train(was_training[1])
    return {"kl": torch.cat(kl), "kl_sampled": torch.cat(kl_sampled), "n_tokens": torch.cat(n_tokens)}


def estimate_kl(policy, reference, tokenizer, conversations: Sequence[Conversation], *, n_samples: int = 1,
                max_new_tokens: int = 64, batch_size: int = 16, seed: int = 0, progress=None) -> dict:
    """Estimate KL(policy || reference) in nats on probe conversations.

    Draws `n_samples` answers per conversation from the policy and scores them under both models.
    `progress(done, total)` is told about the sampling after each batch (None: silent).

    Returns:
        kl_per_sequence: mean full-vocabulary estimate per answer (the headline `kl` metric).
        kl_per_token: total full-vocabulary KL / total answer tokens.
        kl_sampled_per_sequence, kl_sampled_per_token: the same from the sampled log-ratio.
        kl_per_sequence_stderr: standard error of `kl_per_sequence` over the answers.
        n_tokens, n_sequences: how much was sampled. Values are None when nothing was.
    """
    prompts = [p for p in encode_prompts(tokenizer, conversations) for _ in range(n_samples)]
    if not prompts:
        return {"kl_per_sequence": None, "kl_per_token": None, "kl_sampled_per_sequence": None,
                "kl_sampled_per_token": None, "kl_per_sequence_stderr": None, "n_tokens": 0,
                "n_sequences": 0}
    _reference_context(policy, reference)  # fail before sampling, not after
    completions = generate_ids(policy, tokenizer, prompts, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, do_sample=True, temperature=1.0, seed=seed,
                               progress=progress)
    scores = score_kl(policy, reference, prompts, completions, batch_size=batch_size)
    return summarize(scores)


def summarize(scores: dict[str, torch.Tensor]) -> dict:
    """Reduce `score_kl` output to the numbers `estimate_kl` reports."""
    kl, sampled, n_tok = (scores[k].double() for k in ("kl", "kl_sampled", "n_tokens"))
    n, total = len(kl), int(n_tok.sum())
    stderr = float(kl.std(unbiased=True) / math.sqrt(n)) if n > 1 else None
    return {
        "kl_per_sequence": float(kl.mean()),
        "kl_per_token": float(kl.sum() / total) if total else None,
        "kl_sampled_per_sequence": float(sampled.mean()),
        "kl_sampled_per_token": float(sampled.sum() / total) if total else None,
        "kl_per_sequence_stderr": stderr,
        "n_tokens": total,
        "n_sequences": n,
    }
