"""The training loop on a tiny random model with the real SmolLM2 tokenizer and chat template.

Checked: batch 1 x 8 accumulation equals 8 x 1; a run stopped after k steps and resumed ends with
the same weights and log as an uninterrupted run; the LoRA reference (adapter off) equals a
separately loaded base; precomputed reference log-probs equal live ones and a second run hits the
cache; export merges a chain of runs into a checkpoint that plain transformers loads; an adapter-only
export is refused for a stage on another run's adapter and loads onto its named base otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinymodels import dpo_config

from alignkit.train import reference as refs
from alignkit.train.run import train

ROOT = Path(__file__).resolve().parents[2]


make_cfg = dpo_config


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "adapter_model.safetensors")


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]


def _assert_same_weights(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


def test_accumulation_1x8_equals_8x1(tmp_path, tiny_ckpt, pairs_file):
    a = train(make_cfg(tmp_path, tiny_ckpt, pairs_file, "a", micro_batch_size=1, gradient_accumulation_steps=8),
              console=lambda *_: None)
    b = train(make_cfg(tmp_path, tiny_ckpt, pairs_file, "b", micro_batch_size=8, gradient_accumulation_steps=1),
              console=lambda *_: None)
    la, lb = _log(a), _log(b)
    for ra, rb in zip(la, lb, strict=True):
        for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5), key
    assert lb[-1]["rewards/margins"] != 0.0  # the step really trained
    _assert_same_weights(_weights(a), _weights(b), atol=1e-5)


def test_resume_equals_uninterrupted(tmp_path, tiny_ckpt, pairs_file):
    full = train(make_cfg(tmp_path, tiny_ckpt, pairs_file, "full", max_steps=4, save_every=2,
                          learning_rate=1e-3, lr_scheduler="cosine", warmup_ratio=0.25, micro_batch_size=2),
                 console=lambda *_: None)

    def crash_at_3(step, total, row):
        if step == 3:
            raise KeyboardInterrupt("simulated crash after the step-2 checkpoint")

    cfg = make_cfg(tmp_path, tiny_ckpt, pairs_file, "cut", max_steps=4, save_every=2,
                   learning_rate=1e-3, lr_scheduler="cosine", warmup_ratio=0.25, micro_batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, console=lambda *_: None, progress=crash_at_3)
    assert not (Path(cfg.output_dir) / "final").exists()
    resumed = train(cfg, resume=True, console=lambda *_: None)
    _assert_same_weights(_weights(full), _weights(resumed), atol=1e-7)
    lf, lr = _log(full), _log(resumed)
    assert [r["step"] for r in lr] == [1, 2, 3, 4]
    for a, b in zip(lf, lr, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-7)
        assert a["lr"] == pytest.approx(b["lr"], abs=1e-12)


def test_existing_run_dir_is_refused(tmp_path, tiny_ckpt, pairs_file):
    from alignkit.errors import UserError

    cfg = make_cfg(tmp_path, tiny_ckpt, pairs_file, "x", max_steps=1)
    train(cfg, console=lambda *_: None)
    before = (Path(cfg.output_dir) / "log.jsonl").read_text()
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg, console=lambda *_: None)
    assert (Path(cfg.output_dir) / "log.jsonl").read_text() == before  # nothing lost


def _tokenized(ckpt: Path, data: Path):
    from alignkit.data.formats import load_preferences
    from alignkit.data.tokenize import tokenize_pairs
    from alignkit.models import load_tokenizer

    tok = load_tokenizer(str(ckpt))
    rows, _ = load_preferences(data)
    pairs, _ = tokenize_pairs(tok, rows, max_length=128, max_prompt_length=96)
    return tok, pairs


def test_adapter_reference_equals_separately_loaded_base(tiny_ckpt, pairs_file):
    from alignkit.data.collate import collate_pairs
    from alignkit.logprobs import completion_logps
    from alignkit.models import apply_lora, load_model

    tok, pairs = _tokenized(tiny_ckpt, pairs_file)
    policy = apply_lora(load_model(str(tiny_ckpt)), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # a non-trivial adapter, so the switch really matters
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    batch = collate_pairs(pairs[:4], tok.pad_token_id)
    ref = refs.AdapterReference().logps(policy, batch, [0, 1, 2, 3])
    with torch.no_grad():
        base, _ = completion_logps(load_model(str(tiny_ckpt)), batch)
        live, _ = completion_logps(policy, batch)
    torch.testing.assert_close(ref, base, atol=1e-5, rtol=1e-5)
    assert (live - base).abs().max() > 1e-3  # the adapter is on outside the context


def test_precomputed_reference_equals_live_and_is_cached(tmp_path, monkeypatch, tiny_ckpt, pairs_file):
    from alignkit.data.collate import collate_pairs
    from alignkit.models import apply_lora, load_model

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    tok, pairs = _tokenized(tiny_ckpt, pairs_file)
    policy = apply_lora(load_model(str(tiny_ckpt)), r=4, alpha=8, dropout=0.0)
    table, path, hit = refs.cached_reference_table(policy, pairs, model_key="k", pad_id=tok.pad_token_id,
                                                   batch_size=3, device="cpu", log=lambda *_: None)
    assert not hit and path.is_file()
    live = refs.AdapterReference().logps(policy, collate_pairs(pairs[2:6], tok.pad_token_id), [2, 3, 4, 5])
    pre = refs.PrecomputedReference(table).logps(policy, collate_pairs(pairs[2:6], tok.pad_token_id), [2, 3, 4, 5])
    torch.testing.assert_close(pre, live, atol=1e-5, rtol=1e-5)

    def boom(*a, **k):
        raise AssertionError("a cache hit must not run the reference forward")

    monkeypatch.setattr(refs, "compute_reference_table", boom)
    again, _, hit = refs.cached_reference_table(policy, pairs, model_key="k", pad_id=tok.pad_token_id,
                                                batch_size=3, device="cpu", log=lambda *_: None)
    assert hit and torch.equal(again, table)


def test_precomputed_run_matches_adapter_run(tmp_path, monkeypatch, tiny_ckpt, pairs_file):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    a = train(make_cfg(tmp_path, tiny_ckpt, pairs_file, "live", reference="adapter"), console=lambda *_: None)
    b = train(make_cfg(tmp_path, tiny_ckpt, pairs_file, "pre", reference="precomputed"), console=lambda *_: None)
    for ra, rb in zip(_log(a), _log(b), strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)
    _assert_same_weights(_weights(a), _weights(b), atol=1e-5)


def test_export_merges_chain_into_plain_checkpoint(tmp_path, tiny_ckpt, pairs_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.export import export
    from alignkit.models import load_model

    sft = make_cfg(tmp_path, tiny_ckpt, pairs_file, "sft").model_copy(update={"method": "sft"})
    sft_run = train(sft, console=lambda *_: None)
    dpo = make_cfg(tmp_path, tiny_ckpt, pairs_file, "dpo")
    dpo.model.name_or_path = str(sft_run)
    dpo_run = train(dpo, console=lambda *_: None)
    out = export(dpo_run, tmp_path / "merged", merge=True)
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(plain.config, "quantization_config", None) is None
    assert AutoTokenizer.from_pretrained(out).chat_template
    ids = torch.tensor([[1, 5, 9, 200, 3000]])
    with torch.no_grad():
        got = plain(ids).logits
        want = load_model(str(dpo_run))(ids).logits
        base = load_model(str(tiny_ckpt))(ids).logits
        sft_only = load_model(str(sft_run))(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - sft_only).abs().max() > 1e-4 and (sft_only - base).abs().max() > 1e-4  # both stages count


def test_unmerged_export_of_a_stage_on_an_adapter_run_is_refused(tmp_path, tiny_ckpt, pairs_file):
    """SFT (LoRA) -> DPO (LoRA): the DPO adapter's adapter_config.json names the root model, so an
    adapter-only export would load onto the wrong base; it is refused (pointing to --merge) and
    nothing is written. A stage on a fully fine-tuned run exports alone and loads onto that run."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from alignkit.errors import UserError
    from alignkit.export import export
    from alignkit.models import load_model

    sft_run = train(make_cfg(tmp_path, tiny_ckpt, pairs_file, "sft").model_copy(update={"method": "sft"}),
                    console=lambda *_: None)
    dpo = make_cfg(tmp_path, tiny_ckpt, pairs_file, "dpo")
    dpo.model.name_or_path = str(sft_run)
    dpo_run = train(dpo, console=lambda *_: None)
    # what the user saw: the adapter names the root checkpoint, not the SFT stage
    named = json.loads((dpo_run / "final" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(named).resolve() == Path(tiny_ckpt).resolve()
    with pytest.raises(UserError, match="--merge") as err:
        export(dpo_run, tmp_path / "adapter", merge=False)
    assert str(sft_run) in str(err.value) and err.value.where == str(dpo_run)
    assert not (tmp_path / "adapter").exists() and not (tmp_path / ".tmp-adapter").exists()

    full_sft = make_cfg(tmp_path, tiny_ckpt, pairs_file, "full-sft").model_copy(update={"method": "sft"})
    full_sft.model.lora.enabled = False
    full_run = train(full_sft, console=lambda *_: None)
    on_full = make_cfg(tmp_path, tiny_ckpt, pairs_file, "on-full")
    on_full.model.name_or_path = str(full_run)
    on_full_run = train(on_full, console=lambda *_: None)
    out = export(on_full_run, tmp_path / "adapter-on-full", merge=False)
    named = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(named).resolve() == (full_run / "final").resolve()
    ids = torch.tensor([[1, 5, 9, 200, 3000]])
    with torch.no_grad():
        got = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(named), out)(ids).logits
        want = load_model(str(on_full_run))(ids).logits
        root = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_ckpt), out)(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (root - want).abs().max() > 1e-4  # the base matters: the root model would give another one


def test_unmerged_export_of_a_single_stage_loads_onto_the_named_base(tmp_path, tiny_ckpt, pairs_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from alignkit.export import export
    from alignkit.models import load_model

    run = train(make_cfg(tmp_path, tiny_ckpt, pairs_file, "one"), console=lambda *_: None)
    out = export(run, tmp_path / "adapter", merge=False)
    named = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(named).resolve() == Path(tiny_ckpt).resolve()
    assert (out / "base_model.txt").read_text().splitlines()[0] == str(Path(tiny_ckpt).resolve())
    ids = torch.tensor([[1, 5, 9, 200, 3000]])
    with torch.no_grad():
        got = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(named), out)(ids).logits
        want = load_model(str(run))(ids).logits
        base = load_model(str(tiny_ckpt))(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (want - base).abs().max() > 1e-4  # the adapter is not a no-op


def test_final_eval_scores_the_split_training_held_out(tmp_path, tiny_ckpt, pairs_file):
    """With `data.eval: null`, training holds out `eval_fraction` of the training file, and the
    final evaluation scores exactly those rows (not none, and not training rows)."""
    from alignkit.eval.runner import _eval_pairs, evaluate_run
    from alignkit.models import load_tokenizer
    from alignkit.train.run import prepare_data, system_prompt

    cfg = make_cfg(tmp_path, tiny_ckpt, pairs_file, "split")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval_fraction": 0.25}),
                                 "eval": cfg.eval.model_copy(update={"enabled": True, "probes": None})})
    tok = load_tokenizer(str(tiny_ckpt))
    held_out = prepare_data(cfg, tok).eval
    scored = _eval_pairs(cfg, tok, system_prompt(cfg))
    assert 0 < len(held_out) < 16
    key = lambda it: (tuple(it.prompt_ids), tuple(it.chosen_ids), tuple(it.rejected_ids))  # noqa: E731
    assert [key(x) for x in scored] == [key(x) for x in held_out]
    train_keys = {key(x) for x in prepare_data(cfg, tok).train}
    assert not train_keys & {key(x) for x in scored}
    run = train(cfg, console=lambda *_: None)
    after = evaluate_run(run, console=lambda *_: None)["after"]
    assert after["reward_accuracy"] is not None and after["n/pairs"] == len(held_out)


def test_dpop_trains_through_the_loop_and_logs_its_penalty(tmp_path, tiny_ckpt, pairs_file):
    """method dpop: step 1 is plain DPO (policy = reference: loss log 2, penalty 0); the penalty is
    logged every step and is never negative."""
    cfg = make_cfg(tmp_path, tiny_ckpt, pairs_file, "dpop", max_steps=3, gradient_accumulation_steps=1)
    cfg.method = "dpop"
    run = train(cfg, console=lambda *_: None)
    assert cfg.train.dpop_lambda == 50.0
    log = _log(run)
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-3) and log[0]["dpop_penalty"] == 0.0
    assert all(r["dpop_penalty"] >= 0.0 for r in log) and len(log) == 3
