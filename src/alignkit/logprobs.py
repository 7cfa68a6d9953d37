"""Per-sequence log-probs of completion tokens, computing only what is needed.

The peers run the LM head over every position of every padded sequence: a (batch, length, vocab)
tensor that dominates memory for small models with large vocabularies (SmolLM2: 49k tokens x 576
hidden). Here the backbone runs once, the hidden states that predict a completion token are
gathered, and the head plus log-softmax run only on those, in chunks whose logits are recomputed
in the backward pass, so peak memory grows with `chunk x vocab`, not `tokens x vocab`.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from alignkit.data.collate import Batch

# Targets per head chunk. 1024 x 49k fp32 logits = 200 MB; smaller chunks save memory, larger ones
# save a little time.
CHUNK = 1024


def _parts(model):
    """(decoder backbone, LM head) of a causal LM, through a peft wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def attention_mask_for(model, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Our boolean (B,1,L,L) mask in the form the model's attention kernel expects.

    SDPA takes a boolean mask; eager attention adds the mask to the scores, so it needs 0 / -inf.
    """
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    if impl == "eager":
        out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return out.masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def _token_logps(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def completion_logps(model, batch: Batch, *, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(target | context) over each segment's completion tokens.

    Returns (logps (S,), n_tokens (S,)) for the batch's S segments.
    """
    decoder, head = _parts(model)
    dtype = next(head.parameters()).dtype
    hidden = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids,
                     attention_mask=attention_mask_for(model, batch.attention_mask, dtype),
                     use_cache=False).last_hidden_state
    h = hidden[batch.rows, batch.cols]  # (N, H): only positions that predict a completion token
    parts = []
    for start in range(0, h.shape[0], chunk):
        hs, ts = h[start:start + chunk], batch.targets[start:start + chunk]
        if torch.is_grad_enabled() and h.shape[0] > chunk:
            parts.append(checkpoint(_token_logps, hs, head, ts, use_reentrant=False))
        else:
            parts.append(_token_logps(hs, head, ts))
    token_logps = torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    logps = token_logps.new_zeros(batch.n_segments).index_add(0, batch.segments, token_logps)
    n_tokens = torch.bincount(batch.segments, minlength=batch.n_segments)
    return logps, n_tokens


@torch.no_grad()
def pair_logps_table(model, pairs, pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """(n, 2) chosen/rejected completion log-probs of tokenized pairs, on the CPU, no gradients."""
    from alignkit.data.collate import collate_pairs

    device = next(model.parameters()).device
    out = [completion_logps(model, collate_pairs(pairs[i:i + batch_size], pad_id).to(device))[0].reshape(-1, 2).cpu()
           for i in range(0, len(pairs), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 2)


def plain_completion_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook computation, for tests: full logits, full log-softmax, mask, sum.

    input_ids, attention_mask, completion_mask: (n, L), right-padded; completion_mask marks the
    completion tokens. Returns (logps (n,), n_tokens (n,)).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    labels = input_ids[:, 1:]
    per_token = logits.log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1)
    m = completion_mask[:, 1:].to(per_token.dtype)
    return (per_token * m).sum(-1), m.sum(-1).long()
