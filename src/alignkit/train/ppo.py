"""Online RL: PPO with a KL penalty (and the critic-free RLOO and GRPO), rollout-then-update.

One step, readable top to bottom in `run_online`:

1. **Rollout**: `rollout_prompts` prompts (a seeded order fixed by the step number), each answered
   `num_generations` times by the current policy (`alignkit.sample`: batched, KV cache, plain
   sampling at `temperature`), each answer cut at its own EOS.
2. **Judge**: the reward (`train.reward_model`: a reward run, a built-in judge or a user's function)
   scores each answer; an answer that never ended loses `missing_eos_penalty`.
3. **Old log-probs, reference log-probs, values**: one no-grad forward with the *training* forward
   (so the first minibatch's ratio is exactly 1), the reference with the LoRA adapter switched off
   (no copy), all log-probs of logits / temperature (as they were sampled).
4. **Advantages** (pure functions in `alignkit.losses.ppo`): PPO - per-token reward -kl_coef * KL,
   the score at the last token, GAE, whitened; RLOO - the sequence reward minus the mean of the
   other answers to the same prompt; GRPO - the group-normalised score, KL (k3) in the loss.
5. **Update**: `ppo_epochs` passes of `num_minibatches` shuffled minibatches, clipped policy loss
   (+ clipped value loss for PPO), one optimizer step per minibatch.

Value model: a linear value head on the policy's own last hidden states (one forward gives log-probs
and values; the value loss also trains the policy's LoRA weights, scaled by `vf_coef`), initialised
to zero (so the first advantages are the returns). Dropout is off throughout (the model stays in
eval mode; gradients do not need train mode), so old and new log-probs come from the same function.

A step's prompts and sampling seed depend only on the seed and the step number, and the adaptive
KL coefficient is checkpointed with the weights, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from safetensors.torch import save_file
from transformers import get_scheduler

from alignkit.config import RunConfig, dump_config
from alignkit.data import formats
from alignkit.data.collate import Batch, PromptCompletion, collate_single
from alignkit.errors import UserError
from alignkit.logprobs import _parts, final_logits, target_hidden
from alignkit.losses import ppo as L
from alignkit.models import (
    apply_lora,
    count_parameters,
    disable_dropout,
    load_model,
    load_tokenizer,
    resolve_mixed_precision,
)
from alignkit.sample import sample, stop_ids
from alignkit.train import preflight
from alignkit.train.checkpoint import save_checkpoint
from alignkit.train.loop import Interrupt, LoopState, make_accelerator


class OnlinePolicy(torch.nn.Module):
    """The LoRA policy and (PPO) its value head; checkpoints hold exactly their trainable weights."""

    def __init__(self, policy, value_head: torch.nn.Linear | None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head

    def trainable_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        state = {f"policy.{k}": v for k, v in get_peft_model_state_dict(self.policy).items()}
        if self.value_head is not None:
            state.update({f"value_head.{k}": v for k, v in self.value_head.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.policy, {k[7:]: v for k, v in state.items() if k.startswith("policy.")})
        if self.value_head is not None:
            self.value_head.load_state_dict({k[11:]: v for k, v in state.items() if k.startswith("value_head.")})

    def forward(self, batch: Batch, temperature: float):
        return token_outputs(self.policy, batch, temperature, self.value_head)


def token_outputs(model, batch: Batch, temperature: float, value_head=None):
    """Per completion token (the batch's N targets, in segment order): log p(token) of
    softmax(logits / T), the entropy of that distribution, and V(state before the token).

    Returns (logps (N,), entropy (N,), values (N,) or None)."""
    _, head = _parts(model)
    h = target_hidden(model, batch)
    logp_all = (final_logits(model.config, head(h).float()) / temperature).log_softmax(-1)
    logps = logp_all.gather(-1, batch.targets[:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    values = value_head(h.to(value_head.weight.dtype)).squeeze(-1).float() if value_head is not None else None
    return logps, entropy, values


def to_padded(x: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(N,) per-target values -> (S, T) right-padded per segment (targets are in segment order)."""
    counts = torch.bincount(batch.segments, minlength=batch.n_segments)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(batch.segments), device=x.device) - starts[batch.segments]
    out = x.new_zeros(batch.n_segments, int(counts.max()) if len(counts) else 0)
    out[batch.segments, pos] = x
    return out


def _collate(items, pad_id, device) -> Batch:
    return collate_single(items, pad_id).to(device)


@torch.no_grad()
def _score_forward(policy: OnlinePolicy, items, pad_id, mb: int, temperature: float, device):
    """Old log-probs and values (adapter on) and reference log-probs (adapter off), padded (b, t)."""
    out = {"old": [], "ref": [], "val": []}
    width = max(len(it.completion_ids) for it in items)
    for s in range(0, len(items), mb):
        batch = _collate(items[s:s + mb], pad_id, device)
        logps, _, values = policy(batch, temperature)
        with policy.policy.disable_adapter():
            ref, _, _ = token_outputs(policy.policy, batch, temperature)
        for key, v in (("old", logps), ("ref", ref), ("val", values)):
            if v is not None:
                p = to_padded(v, batch)
                out[key].append(torch.nn.functional.pad(p, (0, width - p.shape[1])))
    return (torch.cat(out["old"]), torch.cat(out["ref"]), torch.cat(out["val"]) if out["val"] else None)


def advantages_for(method: str, tcfg, scores, old, ref, values, mask, kl_coef: float, k: int):
    """(advantages (b, t), returns (b, t) or None, stats) for one rollout."""
    kl = L.kl_per_token(old, ref, "k1") * mask
    kl_seq = kl.sum(1)
    stats = {"kl": float(kl_seq.mean()), "non_score_reward": float(-kl_coef * kl_seq.mean())}
    if method == "ppo":
        rewards, _ = L.ppo_token_rewards(scores, kl, mask, kl_coef)
        if tcfg.whiten_rewards:
            rewards = L.masked_whiten(rewards, mask, shift_mean=False)
        adv, ret = L.gae(rewards, values, mask, tcfg.gamma, tcfg.lam)
        return L.masked_whiten(adv, mask) * mask, ret, stats
    if method == "rloo":
        seq = L.rloo_advantages(scores - kl_coef * kl_seq, k)
    else:  # grpo: the KL is a loss term, not part of the reward
        seq = L.grpo_advantages(scores, k)
    return seq[:, None] * mask, None, stats


def run_online(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, force: bool = False,
               console=print, progress=None, evaluate_after: bool = False, keep: tuple[str, ...] = ()) -> Path:
    """`alignkit train` for ppo / rloo / grpo; returns the run directory (see `run.train`)."""
    from alignkit.judges import load_judge
    from alignkit.train.run import (
        _resume,
        _write_run_json,
        check_run_dir,
        data_options,
        finished_status,
        peak_memory_mb,
        prepare_run_dir,
        run_plan,
        save_final,
        system_prompt,
        tracker_config,
    )

    run = check_run_dir(cfg, resume=resume, overwrite=overwrite, keep=keep)
    tcfg, method = cfg.train, cfg.method
    k = tcfg.num_generations
    if method in ("rloo", "grpo") and k < 2:
        raise UserError(f"{method} needs at least 2 answers per prompt for its group baseline",
                        where="config field train.num_generations", hint="use 4 (or 2 at least)")
    if not tcfg.reward_model:
        raise UserError(f"method {method} needs a reward", where="config field train.reward_model",
                        hint="name a finished reward run (alignkit train examples/task_api/reward.yaml), "
                             "a judge (task_api) or your own package.module:function")
    if cfg.model.gradient_checkpointing:
        raise UserError(f"gradient checkpointing is not supported for {method} yet (the online loop keeps the "
                        "model in eval mode, where transformers does not checkpoint)",
                        where="config field model.gradient_checkpointing", hint="set it to false")
    if not cfg.model.lora.enabled:
        raise UserError(f"{method} needs LoRA: its reference is the policy with the adapter switched off",
                        where="config field model.lora.enabled", hint="set model.lora.enabled: true")
    mp = resolve_mixed_precision(tcfg.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
    accelerator = make_accelerator(mp, trackers=tcfg.trackers, project_dir=str(run))
    device = accelerator.device
    set_seed(tcfg.seed)
    tokenizer = load_tokenizer(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    prompts, rep = formats.load_prompts(cfg.data.train, system=system_prompt(cfg), **data_options(cfg))
    if cfg.data.max_rows:
        prompts = prompts[:cfg.data.max_rows]
    judge = load_judge(tcfg.reward_model, where="config field train.reward_model")
    if hasattr(judge, "check_tokenizer"):
        judge.check_tokenizer(tokenizer, "config field train.reward_model")
    gold = load_judge(tcfg.gold_judge, where="config field train.gold_judge") if tcfg.gold_judge else None
    from alignkit.data.tokenize import encode_prompt

    prompt_ids = [encode_prompt(tokenizer, p.prompt, p.source)[-cfg.data.max_prompt_length:] for p in prompts]
    console(f"{method}: {len(prompts)} prompts from {cfg.data.train} ({rep.skipped} invalid skipped); "
            f"reward: {judge.name}" + (f"; gold judge: {gold.name}" if gold else ""))

    plan = run_plan(cfg, device)
    if plan is not None and device.type == "cuda":
        preflight.check_memory(plan, force=force, console=console)
    base = load_model(cfg.model.name_or_path, dtype=cfg.model.dtype, device=device,
                      trust_remote_code=cfg.model.trust_remote_code, allow_pickle=cfg.model.allow_pickle,
                      attn_implementation=cfg.model.attn_implementation, quantization=cfg.model.quantization)
    disable_dropout(base)  # policy.eval() below does it too; one rule for every method that compares log-probs
    lc = cfg.model.lora
    model = apply_lora(base, r=lc.r, alpha=lc.alpha, dropout=lc.dropout, target_modules=lc.target_modules,
                       gradient_checkpointing=cfg.model.gradient_checkpointing)
    value_head = None
    if method == "ppo":
        value_head = torch.nn.Linear(base.config.hidden_size, 1).to(device)
        torch.nn.init.zeros_(value_head.weight)
        torch.nn.init.zeros_(value_head.bias)
    policy = OnlinePolicy(model, value_head)
    policy.eval()  # dropout off: old and new log-probs must be the same function
    trainable, total = count_parameters(policy)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=tcfg.learning_rate,
                                  weight_decay=tcfg.weight_decay, eps=1e-5)  # eps 1e-5: N+ details
    steps = tcfg.max_steps or max(1, math.ceil(len(prompts) * tcfg.epochs / tcfg.rollout_prompts))
    updates = steps * tcfg.ppo_epochs * tcfg.num_minibatches
    scheduler = get_scheduler(tcfg.lr_scheduler if tcfg.lr_scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=int(tcfg.warmup_ratio * updates), num_training_steps=updates)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    kl_ctl = (L.AdaptiveKLController(tcfg.kl_coef, tcfg.kl_target, tcfg.kl_horizon) if tcfg.kl_target
              else L.FixedKLController(tcfg.kl_coef))
    prepare_run_dir(run, resume=resume, overwrite=overwrite, keep=keep)
    log_file = run / "log.jsonl"
    (run / "config.yaml").write_text(dump_config(cfg))
    _write_run_json(run, cfg, status="running", steps=steps, trainable=trainable, total=total, reference="adapter",
                    data=f"{len(prompts)} prompts", reward=judge.name, mixed_precision=mp,
                    predicted_memory_mb=plan.total / 2**20 if plan else None)
    state = LoopState()
    if resume:
        state = _resume(run, policy, optimizer, scheduler, log_file, console)
        if "kl_ctl" in state.extra:
            kl_ctl.load_state_dict(state.extra["kl_ctl"])
    else:
        log_file.write_text("")
    preflight.check_disk(run, preflight.checkpoint_bytes(model, tcfg.keep_checkpoints))
    if tcfg.trackers:
        accelerator.init_trackers(run.name, config=tracker_config(cfg))
    console(f"{method}: {steps} steps x {tcfg.rollout_prompts} prompts x {k} answers; trainable "
            f"{trainable:,} / {total:,} params; reference: adapter off; value model: "
            f"{'head on the policy' if value_head is not None else 'none (group baseline)'}")
    stops, pad = stop_ids(model, tokenizer), tokenizer.pad_token_id
    order = _prompt_order(len(prompts), steps * tcfg.rollout_prompts, tcfg.seed)
    t_start = time.perf_counter()
    with Interrupt() as interrupt:
        while state.step < steps:
            idx = order[state.step * tcfg.rollout_prompts:(state.step + 1) * tcfg.rollout_prompts]
            row = _step(cfg, policy, optimizer, scheduler, kl_ctl, judge, gold, [prompts[i] for i in idx],
                        [prompt_ids[i] for i in idx], tokenizer, stops, pad, device, state.step, accelerator)
            state.step += 1
            row = {"step": state.step, **row}
            state.extra = {"kl_ctl": kl_ctl.state_dict()}
            if state.step % tcfg.log_every == 0 or state.step == steps:
                with open(log_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                accelerator.log({k_: v for k_, v in row.items() if isinstance(v, (int, float))}, step=state.step)
            if progress is not None:
                progress(state.step, steps, row)
            if ((tcfg.save_every and state.step % tcfg.save_every == 0) or interrupt.requested) and state.step < steps:
                save_checkpoint(run, state.step, accelerator.unwrap_model(policy), optimizer, scheduler,
                                {"step": state.step, "skipped_steps": 0, "tokens_seen": 0, "extra": state.extra},
                                keep=tcfg.keep_checkpoints)
            if interrupt.requested and state.step < steps:  # at the last step: finish (final/)
                console(f"interrupted: checkpoint saved at step {state.step}; continue with "
                        f"`alignkit train --resume {run}`")
                _write_run_json(run, cfg, status="interrupted", steps=steps, done=state.step,
                                signal=interrupt.signal)
                return run
    unwrapped = accelerator.unwrap_model(policy)
    save_final(unwrapped.policy, tokenizer, run)
    if unwrapped.value_head is not None:
        save_file({k_: v.detach().cpu().contiguous() for k_, v in unwrapped.value_head.state_dict().items()},
                  run / "final" / "value_head.safetensors")
    _write_run_json(run, cfg, status=finished_status(evaluate_after), steps=steps, done=state.step,
                    train_seconds=round(time.perf_counter() - t_start, 1), peak_memory_mb=peak_memory_mb(device))
    accelerator.end_training()
    return run


def _prompt_order(n: int, needed: int, seed: int) -> list[int]:
    """Prompt indices for the whole run: each epoch a fresh seeded shuffle (a function of the seed only)."""
    out: list[int] = []
    epoch = 0
    while len(out) < needed:
        perm = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(perm)
        out += perm
        epoch += 1
    return out


def _step(cfg, policy, optimizer, scheduler, kl_ctl, judge, gold, prompts, prompt_ids, tokenizer, stops, pad,
          device, step: int, accelerator) -> dict:
    tcfg, method, k = cfg.train, cfg.method, cfg.train.num_generations
    inner = accelerator.unwrap_model(policy)
    t0 = time.perf_counter()
    # Rollouts decode with the adapter merged into a copy of the weights (one matmul per layer, not three):
    # faster, and the old log-probs come from the training forward anyway. Not for a quantized base,
    # where a merged copy would be a full-precision model.
    # Under bf16 autocast the copy is bf16 too: it decodes at the precision the update computes in.
    quantized = getattr(inner.policy.get_base_model(), "is_quantized", False)
    merged_dtype = None if quantized else (torch.bfloat16 if accelerator.mixed_precision == "bf16"
                                           else next(inner.policy.parameters()).dtype)
    s = sample(inner.policy, prompt_ids, stop_ids=stops, pad_id=pad, max_new_tokens=tcfg.max_new_tokens,
               do_sample=True, temperature=tcfg.temperature, num_samples=k, decode_dtype=merged_dtype,
               batch_size=max(tcfg.micro_batch_size, len(prompt_ids) * k), seed=tcfg.seed * 1_000_003 + step)
    t_gen = time.perf_counter() - t0
    texts = [tokenizer.decode(c, skip_special_tokens=True).strip() for c in s.completion_ids]
    convs = [list(prompts[i].prompt) for i in s.prompt_index]
    metas = [prompts[i].meta for i in s.prompt_index]
    raw = torch.tensor(judge(convs, texts, metas), dtype=torch.float32)
    ended = torch.tensor(s.ended)
    scores = raw - tcfg.missing_eos_penalty * (~ended).float()
    gold_scores = torch.tensor(gold(convs, texts, metas)) if gold is not None else None
    t_score = time.perf_counter() - t0 - t_gen
    items = [PromptCompletion(p, c) for p, c in zip(s.prompt_ids, s.completion_ids, strict=True)]
    with accelerator.autocast():  # the precision of the update's forward: its first ratio is 1
        old, ref, values = _score_forward(inner, items, pad, tcfg.micro_batch_size, tcfg.temperature, device)
    lengths = torch.tensor([len(c) for c in s.completion_ids])
    mask = (torch.arange(old.shape[1])[None, :] < lengths[:, None]).float().to(device)
    adv, ret, stats = advantages_for(method, tcfg, scores.to(device), old, ref, values, mask, kl_ctl.value, k)
    sums = _update(cfg, policy, optimizer, scheduler, items, mask, old, ref, values, adv, ret, pad, device, step,
                   accelerator)
    kl_ctl.update(stats["kl"], len(items))
    t_update = time.perf_counter() - t0 - t_gen - t_score
    row = {"score": float(raw.mean()), "score_after_penalty": float(scores.mean()), **stats,
           "kl_coef": kl_ctl.value, "response_length": float(lengths.float().mean()),
           "eos_rate": float(ended.float().mean()), **sums, "lr": scheduler.get_last_lr()[0],
           "time/generation": round(t_gen, 3), "time/scoring": round(t_score, 3), "time/update": round(t_update, 3),
           "rollout_tokens_per_s": float(lengths.sum()) / max(t_gen, 1e-9)}
    if gold_scores is not None:
        row["gold_score"] = float(gold_scores.mean())
        row["reward_gold_agreement"] = _agreement(raw, gold_scores, s.prompt_index)
    if ret is not None:
        row["explained_variance"] = L.explained_variance(values, ret, mask)
    return row


def _agreement(reward: torch.Tensor, gold: torch.Tensor, groups: list[int]) -> float | None:
    """Share of answer pairs to the same prompt that the reward and the gold judge order the same way
    (pairs the gold judge ties are skipped): reward hacking shows as this falling."""
    agree = total = 0
    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            if groups[i] != groups[j] or gold[i] == gold[j]:
                continue
            total += 1
            agree += int((reward[i] - reward[j]) * (gold[i] - gold[j]) > 0)
    return agree / total if total else None


def _update(cfg, policy, optimizer, scheduler, items, mask, old, ref, values, adv, ret, pad, device, step,
            accelerator) -> dict:
    """`ppo_epochs` x `num_minibatches` optimizer steps over the rollout; returns mean metrics."""
    tcfg, method = cfg.train, cfg.method
    n = len(items)
    g = torch.Generator().manual_seed(tcfg.seed * 1_000_003 + step)
    per_mb = math.ceil(n / tcfg.num_minibatches)
    sums: dict[str, float] = {}
    count = 0
    params = [p for p in policy.parameters() if p.requires_grad]
    for _ in range(tcfg.ppo_epochs):
        perm = torch.randperm(n, generator=g).tolist()
        for m in range(0, n, per_mb):
            mb = perm[m:m + per_mb]
            mb_tokens = float(mask[mb].sum())
            metrics: dict[str, float] = {}
            for s in range(0, len(mb), tcfg.micro_batch_size):
                ids = mb[s:s + tcfg.micro_batch_size]
                batch = _collate([items[i] for i in ids], pad, device)
                with accelerator.autocast():
                    logps_f, entropy_f, values_f = policy(batch, tcfg.temperature)
                w = mask[ids]
                T = w.shape[1]

                def pad_t(x, T=T, batch=batch):
                    p = to_padded(x, batch)
                    return torch.nn.functional.pad(p, (0, T - p.shape[1]))
                logps, entropy = pad_t(logps_f), pad_t(entropy_f)
                share = float(w.sum()) / mb_tokens  # micro-batches add up to the minibatch's token mean
                pg, pm = L.ppo_policy_loss(logps, old[ids], adv[ids], w, tcfg.clip_range)
                loss = pg
                if method == "ppo":
                    vf, vm = L.ppo_value_loss(pad_t(values_f), values[ids], ret[ids], w, tcfg.clip_range_value)
                    loss = loss + tcfg.vf_coef * vf
                    pm = {**pm, **vm, "value_loss": vf.detach()}
                if method == "grpo" and tcfg.kl_coef:
                    kl3 = L.masked_mean(L.kl_per_token(logps, ref[ids], "k3"), w)
                    loss = loss + tcfg.kl_coef * kl3
                accelerator.backward(loss * share)
                pm = {**pm, "policy_loss": pg.detach(), "entropy": L.masked_mean(entropy.detach(), w)}
                for key, v in pm.items():
                    metrics[key] = metrics.get(key, 0.0) + float(v) * share
            grad_norm = float(accelerator.clip_grad_norm_(params, tcfg.max_grad_norm)) if tcfg.max_grad_norm else 0.0
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            metrics["grad_norm"] = grad_norm
            for key, v in metrics.items():
                sums[key] = sums.get(key, 0.0) + v
            count += 1
    out = {key: v / count for key, v in sums.items()}
    # The ratio on the very first minibatch is exactly 1 (same forward, same weights): a check anyone can read.
    return out
