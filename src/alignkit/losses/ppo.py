"""Online RL objectives as pure functions: PPO (with GAE and a KL-penalised reward), RLOO, GRPO.

Every per-token tensor is ``(b, t)``: right-padded response tokens, with ``mask (b, t)`` (bool or
0/1 float) 1 on a real response token, **including the EOS token**, and 0 on the padding after it.
Padding is nonexistent: every function reads its inputs only through ``torch.where(mask, x, 0)``, so
the values at padding positions (any finite or non-finite garbage) change no output at a real position,
no loss and no metric, and receive zero gradient.

The PPO pieces follow TRL's PPO trainer (v0.11-v0.24) and "The N+ Implementation Details of RLHF with
PPO" (Huang et al. 2024, arXiv:2403.17031); papers and equations per function, and in docs/PAPERS.md.
One convention differs from TRL's code, not its meaning: the score lands on the row's last real token,
the EOS token when the answer ended (TRL indexes "one after the last non-pad", because its pad == EOS
turns the EOS into a pad; the position is the same).

The rollout tensors (``old_logps``, ``old_values``, ``advantages``, ``returns``) are constants of the
update: the losses detach them, so a gradient can only flow into ``logps`` and ``values``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.losses.dpo import check_hparam

_WHITEN_EPS = 1e-8


def _check_shapes(**tensors: Tensor) -> None:
    shapes = {name: tuple(x.shape) for name, x in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("shapes differ: " + ", ".join(f"{n} {s}" for n, s in shapes.items()))


# ---------------------------------------------------------------- masked statistics


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the entries where `mask` is 1, over all entries (``dim=None``) or along `dim`.

    Shapes: `x` ``(b, t)``, `mask` broadcastable to it -> a scalar, or ``x`` reduced along `dim`.
    An empty mask (or an empty row along `dim`) gives 0, not NaN: an empty batch is a no-op step.
    """
    m = mask.bool().expand_as(x)
    total = torch.where(m, x, 0).sum() if dim is None else torch.where(m, x, 0).sum(dim)
    count = m.sum() if dim is None else m.sum(dim)
    return total / count.to(x.dtype).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over the masked entries (one scalar over the whole batch, as TRL's).

    ``unbiased=True`` applies Bessel's correction ``n / (n - 1)`` and needs at least 2 masked
    entries (ValueError otherwise); ``unbiased=False`` divides by n. Shapes: ``(b, t)`` -> ``()``.
    """
    m = mask.bool().expand_as(x)
    centred = torch.where(m, x - masked_mean(x, m), 0)
    var = masked_mean(centred**2, m)
    if unbiased:
        n = int(m.sum())
        if n < 2:
            raise ValueError(f"unbiased masked_var needs at least 2 masked entries, got {n}")
        var = var * (n / (n - 1))
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` with mean and (unbiased) variance over the masked entries.

    ``shift_mean=False`` adds the mean back: the scale is normalised, the mean kept (TRL's reward
    whitening, ``whiten_rewards``). Advantages use the default (N+ paper; TRL, torchtune).
    Padding positions are returned as 0. Shapes: ``(b, t)`` -> ``(b, t)``.
    """
    m = mask.bool().expand_as(x)
    mean, var = masked_mean(x, m), masked_var(x, m)
    out = (x - mean) * torch.rsqrt(var + _WHITEN_EPS)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, 0)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over the masked entries: 1 is a perfect critic, 0 one no better than
    a constant, negative worse. NaN when the returns have zero variance. Shapes: ``(b, t)`` each.
    """
    _check_shapes(values=values, returns=returns, mask=mask)
    var_r = masked_var(returns.detach(), mask, unbiased=False)
    var_err = masked_var((returns - values).detach(), mask, unbiased=False)
    return float("nan") if var_r.item() == 0 else float(1 - var_err / var_r)


# ---------------------------------------------------------------- KL and the per-token reward


def kl_per_token(logps: Tensor, ref_logps: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimators of KL(pi || pi_ref) on tokens sampled from pi (Schulman 2020, "Approximating
    KL Divergence"), with ``d = ref_logps - logps`` (so ``r = exp(d) = pi_ref / pi``):

        k1 = -d = logps - ref_logps        unbiased, can be negative (TRL/torchtune/OpenRLHF PPO)
        k2 = d^2 / 2                       biased, >= 0
        k3 = exp(d) - d - 1 = (r - 1) - log r   unbiased, >= 0 (GRPO's KL term, DeepSeekMath eq. 4)

    k3 uses ``expm1`` so it stays >= 0 and accurate near d = 0. Elementwise: ``(b, t)`` -> ``(b, t)``;
    padding positions come out as whatever they are, the consumers mask them.
    """
    _check_shapes(logps=logps, ref_logps=ref_logps)
    d = ref_logps - logps
    if kind == "k1":
        return -d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        return torch.expm1(d) - d
    raise ValueError(f"unknown KL estimator kind={kind!r}; use 'k1', 'k2' or 'k3'")


def ppo_token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> tuple[Tensor, Tensor]:
    """The KL-penalised per-token reward of RLHF-PPO (Ziegler et al. 2019, arXiv:1909.08593, Sec. 2.2;
    Ouyang et al. 2022, arXiv:2203.02155, eq. 2):

        non_score_t = -kl_coef * kl_t               on real tokens, 0 on padding
        rewards_t   = non_score_t + [t == last real token of the row] * score

    Args:
        scores: ``(b,)`` reward-model (or judge) score of each response, any penalty for a missing EOS
            already applied.
        kl: ``(b, t)`` per-token KL estimate, e.g. `kl_per_token` (TRL/torchtune use k1).
        mask: ``(b, t)`` response mask; the score lands on each row's last 1 (the EOS token when the
            answer ended, else the last generated token). A row without real tokens gets nothing.
        kl_coef: beta >= 0, e.g. ``AdaptiveKLController.value``.

    Returns:
        ``(rewards, non_score_rewards)``, both ``(b, t)``, 0 on padding.
    """
    _check_shapes(kl=kl, mask=mask)
    if scores.shape != kl.shape[:1]:
        raise ValueError(f"scores {tuple(scores.shape)} must be (b,) = ({kl.shape[0]},)")
    check_hparam("ppo", "kl_coef", float(kl_coef), low=0.0)
    m = mask.bool()
    non_score = torch.where(m, -kl_coef * kl, 0)
    pos = torch.arange(m.shape[1], device=m.device)
    last = torch.where(m, pos, -1).max(dim=1).values  # -1 for a row with no real token
    at_last = (pos[None, :] == last[:, None]) & m
    rewards = non_score + torch.where(at_last, scores[:, None].to(non_score.dtype), 0)
    return rewards, non_score


# ---------------------------------------------------------------- GAE


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2015, arXiv:1506.02438, eq. 16), one backward
    scan over t, vectorised over the batch:

        delta_t = r_t + gamma * V_{t+1} - V_t,     A_t = delta_t + gamma * lam * A_{t+1},

    where V_{t+1} = A_{t+1} = 0 after the row's last real token (the episode ends at EOS; a truncated
    answer is treated the same way, as TRL and torchtune do). ``returns = A + V`` is the value target.

    Shapes: `rewards`, `values`, `mask` ``(b, t)`` -> ``(advantages, returns)`` ``(b, t)``, both 0 on
    padding. Call it on detached rollout tensors (under ``torch.no_grad()`` in the loop).
    """
    _check_shapes(rewards=rewards, values=values, mask=mask)
    check_hparam("ppo", "gamma", gamma, low=0.0, high=1.0)
    check_hparam("ppo", "lam", lam, low=0.0, high=1.0)
    m = mask.bool()
    r, v = torch.where(m, rewards, 0), torch.where(m, values, 0)
    mf = m.to(r.dtype)
    zero = torch.zeros_like(r[:, 0])
    last, next_v, next_m = zero, zero, zero
    out = [zero] * r.shape[1]
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_v - v[:, t]  # next_v is 0 at padding: v was masked
        last = delta + gamma * lam * next_m * last
        out[t] = last
        next_v, next_m = v[:, t], mf[:, t]
    adv = torch.where(m, torch.stack(out, dim=1), 0)
    return adv, torch.where(m, adv + v, 0)


def gae_loop(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Plain double-loop twin of `gae` over Python floats, for tests: row i has ``n_i = mask[i].sum()``
    real tokens at positions 0..n_i-1 (right padding) and the recursion starts from 0 after them.
    """
    b, t_len = rewards.shape
    adv = [[0.0] * t_len for _ in range(b)]
    ret = [[0.0] * t_len for _ in range(b)]
    for i in range(b):
        n = int(mask[i].sum())
        r, v = rewards[i].tolist(), values[i].tolist()
        a = 0.0
        for t in reversed(range(n)):
            v_next = v[t + 1] if t + 1 < n else 0.0
            a = r[t] + gamma * v_next - v[t] + gamma * lam * a
            adv[i][t], ret[i][t] = a, a + v[t]
    like = {"dtype": rewards.dtype, "device": rewards.device}
    return torch.tensor(adv, **like), torch.tensor(ret, **like)


# ---------------------------------------------------------------- PPO losses


def ppo_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor,
                    clip_range: float) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, arXiv:1707.06347, eq. 7), as a loss:

        ratio = exp(logps - old_logps)
        loss  = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - e, 1 + e)))

    The mean is over all real tokens of the batch (token-weighted, as TRL's PPO trainer). `old_logps`
    and `advantages` are detached.

    Shapes: all ``(b, t)`` -> a scalar loss and detached scalar metrics: ``clipfrac`` (share of real
    tokens where the clipped term is the larger one), ``approxkl`` (``0.5 * masked_mean((logps -
    old_logps)^2)``, TRL's), ``ratio`` (masked mean) and ``ratio_max`` (0 for an empty mask).
    """
    _check_shapes(logps=logps, old_logps=old_logps, advantages=advantages, mask=mask)
    check_hparam("ppo", "clip_range", clip_range, low=0.0, low_open=True)
    m = mask.bool()
    adv = torch.where(m, advantages.detach(), 0)
    logratio = torch.where(m, logps - old_logps.detach(), 0)  # 0 at padding: exp stays finite
    ratio = torch.exp(logratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), m)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), m),
            "approxkl": 0.5 * masked_mean(logratio**2, m),
            "ratio": masked_mean(ratio, m),
            "ratio_max": torch.where(m, ratio, 0).max(),
        }
    return loss, metrics


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                   clip_range: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss (OpenAI baselines ppo2, TRL, N+ paper; not in the PPO paper):

        loss = 0.5 * masked_mean(max((V - R)^2, (clip(V, V_old - e, V_old + e) - R)^2))

    `old_values` and `returns` are detached. Shapes: all ``(b, t)`` -> a scalar loss and
    ``{"vf_clipfrac": share of real tokens where the clipped term is the larger one}`` (detached).
    """
    _check_shapes(values=values, old_values=old_values, returns=returns, mask=mask)
    check_hparam("ppo", "clip_range", clip_range, low=0.0, low_open=True)
    m = mask.bool()
    v = torch.where(m, values, 0)
    v_old, ret = torch.where(m, old_values.detach(), 0), torch.where(m, returns.detach(), 0)
    v_clipped = v_old + torch.clamp(v - v_old, -clip_range, clip_range)
    unclipped, clipped = (v - ret) ** 2, (v_clipped - ret) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), m)
    with torch.no_grad():
        metrics = {"vf_clipfrac": masked_mean((clipped > unclipped).to(v.dtype), m)}
    return loss, metrics


# ---------------------------------------------------------------- critic-free advantages


def _groups(rewards: Tensor, k: int, name: str) -> Tensor:
    if rewards.dim() != 1 or k < 1 or rewards.numel() % k:
        raise ValueError(f"{name}: rewards {tuple(rewards.shape)} must be (n*k,) with k={k} samples per prompt")
    return rewards.view(-1, k)


def rloo_advantages(rewards: Tensor, k: int) -> Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740):

        A_i = r_i - mean_{j != i in i's group} r_j = (k r_i - sum_group r) / (k - 1)

    `rewards` ``(n*k,)``: k consecutive samples per prompt (TRL 1.16's ``view(-1, k)`` layout; TRL
    v0.11 laid them out prompt-minor, ``(k, n)``). Returns ``(n*k,)``; each group sums to 0. k >= 2.
    """
    if k < 2:
        raise ValueError(f"rloo_advantages needs k >= 2 samples per prompt (a leave-one-out baseline), got {k}")
    g = _groups(rewards, k, "rloo_advantages")
    baseline = (g.sum(dim=1, keepdim=True) - g) / (k - 1)
    return (g - baseline).reshape(-1)


def grpo_advantages(rewards: Tensor, k: int, eps: float = 1e-4, scale: bool = True) -> Tensor:
    """GRPO's group-normalised outcome advantage (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300,
    Sec. 4.1.2), with TRL 1.16's conventions:

        A_i = (r_i - mean_group r) / (std_group r + eps)

    The std is **unbiased** (Bessel's correction, ``torch.std``'s default, as TRL's ``nanstd``), and
    `eps` = 1e-4 is added to the std, as TRL's ``scale_rewards="group"``. ``scale=False`` only centres
    (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783; TRL ``scale_rewards="none"``). For k = 1 the std is
    taken as 0, as TRL does, so the advantage is 0.

    `rewards` ``(n*k,)``, k consecutive samples per prompt -> ``(n*k,)``; each group sums to 0.
    """
    g = _groups(rewards, k, "grpo_advantages")
    adv = g - g.mean(dim=1, keepdim=True)
    if scale:
        std = g.std(dim=1, keepdim=True) if k > 1 else torch.zeros_like(adv[:, :1])
        adv = adv / (std + eps)
    return adv.reshape(-1)


# ---------------------------------------------------------------- KL coefficient controllers


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, arXiv:1909.08593, Sec. 2.2):

        e = clip(kl / target - 1, -0.2, 0.2),    value *= 1 + e * n_steps / horizon

    `kl` is the measured KL of the rollout (sum over tokens, mean over sequences), `n_steps` the
    number of samples (sequences) in it, as TRL v0.11 passes ``batch_size``.
    """

    def __init__(self, init: float, target: float, horizon: int):
        check_hparam("ppo", "kl_coef", init, low=0.0)
        check_hparam("ppo", "kl_target", target, low=0.0, low_open=True)
        check_hparam("ppo", "kl_horizon", horizon, low=1.0)
        self.value = float(init)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, kl: float, n_steps: int) -> None:
        error = min(max(float(kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, d: dict) -> None:
        self.value, self.target, self.horizon = float(d["value"]), float(d["target"]), int(d["horizon"])


class FixedKLController:
    """A constant KL coefficient with `AdaptiveKLController`'s interface; `update` does nothing.
    `target` and `horizon` are accepted and ignored, so the loop can build either from one config."""

    def __init__(self, init: float, target: float | None = None, horizon: int | None = None):
        check_hparam("ppo", "kl_coef", init, low=0.0)
        self.value = float(init)

    def update(self, kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, d: dict) -> None:
        self.value = float(d["value"])
