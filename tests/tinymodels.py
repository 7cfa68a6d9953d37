"""Tiny random models for tests (no downloads). A module of its own, not conftest: several test
folders have a conftest.py, so `from conftest import ...` is ambiguous in a full run."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class TokenPair:
    """A tokenized preference pair (the fields `alignkit.data.collate.collate_pairs` reads)."""

    prompt_ids: list
    chosen_ids: list
    rejected_ids: list


def random_pairs(n: int = 5, seed: int = 0, vocab: int = 128, prompt=(1, 12), answer=(1, 9)) -> list[TokenPair]:
    """`n` random pairs, ids in [3, vocab), lengths drawn from the ranges; answers end with id 2."""
    g = torch.Generator().manual_seed(seed)

    def r(lo, hi):
        return torch.randint(3, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    return [TokenPair(r(*prompt), r(*answer) + [2], r(*answer) + [2]) for _ in range(n)]


def plain_pair_logps(model, pairs):
    """The model's own forward: two right-padded rows per pair (chosen, rejected interleaved) through
    `alignkit.logprobs.plain_completion_logps`, no grad. Returns (logps (2n,), tokens (2n,))."""
    from alignkit.logprobs import plain_completion_logps

    seqs, masks = [], []
    for p in pairs:
        for c in (p.chosen_ids, p.rejected_ids):
            seqs.append(p.prompt_ids + c)
            masks.append([0] * len(p.prompt_ids) + [1] * len(c))
    L = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (L - len(s)) for s in seqs])
    att = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in seqs])
    cm = torch.tensor([m + [0] * (L - len(m)) for m in masks])
    with torch.no_grad():
        return plain_completion_logps(model, ids, att, cm)


def dpo_config(tmp, ckpt, data, name: str, **train):
    """The training tests' DPO run: LoRA r=4 on `ckpt`, the pairs in `data`, the Task API system
    prompt, no held-out split, no evaluation, 2 steps of 4 x 2 pairs at a constant lr 1e-2; `train`
    overrides any train field."""
    from pathlib import Path

    from alignkit.config import RunConfig

    root = Path(__file__).resolve().parents[1]
    t = dict(learning_rate=1e-2, micro_batch_size=4, gradient_accumulation_steps=2, max_steps=2,
             warmup_ratio=0.0, lr_scheduler="constant")
    t.update(train)
    return RunConfig.model_validate({
        "method": "dpo", "output_dir": str(Path(tmp) / name),
        "model": {"name_or_path": str(ckpt), "lora": {"r": 4, "alpha": 8}},
        "data": {"train": str(data), "eval": None, "eval_fraction": 0.0, "max_length": 128,
                 "max_prompt_length": 96, "system_prompt_file": str(root / "examples/task_api/system_prompt.txt")},
        "train": t, "eval": {"enabled": False}})
