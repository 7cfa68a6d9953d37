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


def save_tiny_checkpoint(out, *, hidden_size: int = 16, intermediate_size: int = 32, seed: int = 0, **config_kw):
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
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      **config_kw)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def word_share_reward(prompts, responses, meta, word: str = "aaaaaab"):
    """A known reward for online-RL tests on `save_small_vocab_checkpoint`: the share of the answer's
    words that are `word` (the small random policy's most frequent word, ~7% at the start)."""
    out = []
    for r in responses:
        words = r.split()
        out.append(sum(w == word for w in words) / max(len(words), 1))
    return out


def save_small_vocab_checkpoint(out, *, vocab_words: int = 48, hidden_size: int = 32, seed: int = 0):
    """A 2-layer Llama over a word-level tokenizer of `vocab_words` words plus SmolLM2's special tokens
    and chat template. A random policy over ~50 tokens ends its answers now and then (the EOS is one
    token in 50), so online RL can visibly learn in a few steps, which a 49k-token random model cannot."""
    from pathlib import Path

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from alignkit.models import default_model_dir

    out = Path(out)
    real = AutoTokenizer.from_pretrained(default_model_dir())
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
    words = ["a" * (1 + i % 8) + chr(ord("b") + i // 8) for i in range(vocab_words)]  # lengths 2..9
    vocab = {t: i for i, t in enumerate(specials + ["system", "user", "assistant", "\n"] + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Whitespace()])
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="[UNK]", additional_special_tokens=specials[:3])
    fast.chat_template = real.chat_template
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                      initializer_range=0.5)
    LlamaForCausalLM(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out
