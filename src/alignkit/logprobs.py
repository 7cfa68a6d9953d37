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
from alignkit.errors import UserError

# Targets per head chunk. 1024 x 49k fp32 logits = 200 MB; smaller chunks save memory, larger ones
# save a little time.
CHUNK = 1024


def _parts(model):
    """(decoder backbone, LM head) of a causal LM, through a peft wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


# Layer kinds whose masks this module builds itself (transformers' `config.layer_types`).
_LAYER_TYPES = ("full_attention", "sliding_attention")


def _sliding_window(config) -> int | None:
    """The attention window of the config's sliding layers, or None (full attention everywhere)."""
    if getattr(config, "use_sliding_window", True) is False:  # Qwen2/Qwen3 keep the size but switch it off
        return None
    window = getattr(config, "sliding_window", None)
    return int(window) if window else None


def shared_mask_problem(config) -> str | None:
    """Why a custom (prefix-shared) 4-D mask cannot reproduce this model's attention, or None."""
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    if impl not in ("eager", "sdpa"):
        return f"attention implementation {impl!r} takes no custom 4-D mask (use eager or sdpa)"
    unknown = sorted(set(getattr(config, "layer_types", None) or ()) - set(_LAYER_TYPES))
    if unknown:
        return f"layer types {unknown} (alignkit builds masks for {', '.join(_LAYER_TYPES)} only)"
    if getattr(config, "use_bidirectional_attention", False):
        return "bidirectional attention (use_bidirectional_attention: true)"
    return None


def _kernel_form(config, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """SDPA takes a boolean mask; eager attention adds the mask to the scores, so it needs 0 / -inf."""
    if getattr(config, "_attn_implementation", "sdpa") == "eager":
        out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return out.masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def attention_mask_for(model, mask: torch.Tensor, dtype: torch.dtype, position_ids: torch.Tensor | None = None):
    """Our boolean (B,1,L,L) mask in the form the model's layers expect.

    With a sliding window (Mistral, Phi-3, Qwen2/3 `use_sliding_window`, Gemma 2/3's local layers) a
    query at position p sees keys at positions > p - window, measured in position ids (so a prefix-
    shared rejected token sees what it sees in its own row). A config with `layer_types` gets one
    mask per type (the dict transformers' decoders take); without them every layer slides.
    """
    config = model.config
    window = _sliding_window(config)
    types = getattr(config, "layer_types", None)
    if window is None or position_ids is None or (types and "sliding_attention" not in types):
        return _kernel_form(config, mask, dtype)
    near = (position_ids[:, None, :, None] - position_ids[:, None, None, :]) < window
    windowed = _kernel_form(config, mask & near, dtype)
    if not types:
        return windowed
    return {"full_attention": _kernel_form(config, mask, dtype), "sliding_attention": windowed}


def final_logits(config, logits: torch.Tensor) -> torch.Tensor:
    """What the model's own forward does to the LM head's output: Gemma 2/3's soft-capping
    (`final_logit_softcapping`), Granite's division by `logits_scaling`, Cohere's `logit_scale`."""
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scaling = getattr(config, "logits_scaling", None)
    if scaling and scaling != 1:
        logits = logits / scaling
    scale = getattr(config, "logit_scale", None)
    if scale is not None and isinstance(scale, (int, float)) and scale != 1:
        logits = logits * scale
    return logits


def decoder_mask(model, batch: Batch, dtype: torch.dtype):
    """The attention mask to pass a backbone for `batch`: a plain layout (one causal sequence per row)
    passes its 2-D padding mask, so the model builds its own masks (sliding windows and all); a
    prefix-shared batch passes our 4-D mask (`attention_mask_for`), refused where none can serve."""
    if batch.padding_mask is not None:
        return batch.padding_mask
    problem = shared_mask_problem(model.config)
    if problem:
        raise UserError(f"prefix sharing cannot reproduce this model's attention: {problem}",
                        where=f"model type {model.config.model_type}, config field train.prefix_sharing",
                        hint="set train.prefix_sharing: false (one row per sequence, the model's own masks)")
    return attention_mask_for(model, batch.attention_mask, dtype, batch.position_ids)


def target_hidden(model, batch: Batch) -> torch.Tensor:
    """(N, H) hidden states that predict the batch's completion tokens, from the decoder alone."""
    decoder, head = _parts(model)
    hidden = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids,
                     attention_mask=decoder_mask(model, batch, next(head.parameters()).dtype),
                     use_cache=False).last_hidden_state
    return hidden[batch.rows, batch.cols]


def _token_logps(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, config=None) -> torch.Tensor:
    logits = final_logits(config, head(hidden).float())
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def completion_logps(model, batch: Batch, *, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(target | context) over each segment's completion tokens.

    Returns (logps (S,), n_tokens (S,)) for the batch's S segments.
    """
    _, head = _parts(model)
    h = target_hidden(model, batch)  # (N, H): only positions that predict a completion token
    parts = []
    for start in range(0, h.shape[0], chunk):
        hs, ts = h[start:start + chunk], batch.targets[start:start + chunk]
        if torch.is_grad_enabled() and h.shape[0] > chunk:
            parts.append(checkpoint(_token_logps, hs, head, ts, model.config, use_reentrant=False))
        else:
            parts.append(_token_logps(hs, head, ts, model.config))
    token_logps = torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    logps = token_logps.new_zeros(batch.n_segments).index_add(0, batch.segments, token_logps)
    n_tokens = torch.bincount(batch.segments, minlength=batch.n_segments)
    return logps, n_tokens


@torch.no_grad()
def pair_logps_table(model, pairs, pad_id: int, batch_size: int = 8, *, shared: bool = True) -> torch.Tensor:
    """(n, 2) chosen/rejected completion log-probs of tokenized pairs, on the CPU, no gradients.

    `shared`: prefix-share the pairs where the model allows it (`shared_mask_problem`), else plain rows."""
    from alignkit.data.collate import collate_pairs

    device = next(model.parameters()).device
    shared = shared and shared_mask_problem(model.config) is None
    out = [completion_logps(model, collate_pairs(pairs[i:i + batch_size], pad_id, shared=shared).to(device))[0]
           .reshape(-1, 2).cpu()
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
