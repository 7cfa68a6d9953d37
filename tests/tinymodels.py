"""Tiny random models for tests (no downloads). A module of its own, not conftest: several test
folders have a conftest.py, so `from conftest import ...` is ambiguous in a full run."""

from __future__ import annotations

import torch


def tiny_llama(seed: int = 0, vocab: int = 128, attn: str = "sdpa", **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).eval()


def save_tiny_checkpoint(out, *, hidden_size: int = 16, intermediate_size: int = 32, seed: int = 0):
    """A 2-layer Llama with SmolLM2's real tokenizer (its chat template), saved as a plain checkpoint:
    the smallest model that goes through every real code path (templates, masks, LoRA, export)."""
    from pathlib import Path

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from alignkit.models import default_model_dir

    out = Path(out)
    tok = AutoTokenizer.from_pretrained(default_model_dir())
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
