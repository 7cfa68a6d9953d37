"""Bradley-Terry reward-model loss, for the RLHF pipeline's reward model.

The reward model scores each (prompt, completion) with a scalar ``r``; under the Bradley-Terry model
``P(y_c > y_r) = sigmoid(r_c - r_r)`` (Bradley & Terry 1952; Ouyang et al. 2022, arXiv:2203.02155,
eq. 1), and the loss is its negative log-likelihood. Matches TRL 1.16 ``RewardTrainer.compute_loss``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from alignkit.losses.dpo import LossOutput, check_hparam


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, *, margin: Tensor | float | None = None,
    center_rewards_coefficient: float = 0.0,
) -> LossOutput:
    """Per-pair reward-model loss.

        loss = -log sigmoid(r_c - r_r - m) + c * (r_c + r_r)^2

    Args:
        chosen_rewards: ``(b,)`` scalar rewards of the chosen completions.
        rejected_rewards: ``(b,)``.
        margin: ``(b,)`` or scalar m, how much better the chosen answer is rated (Llama 2,
            Touvron et al. 2023, arXiv:2307.09288, eq. 2); None is 0.
        center_rewards_coefficient: c, pulls rewards towards zero mean (Eisenstein et al. 2023,
            arXiv:2312.09244), TRL's ``center_rewards_coefficient``; 0 disables it.

    Returns:
        ``LossOutput(losses (b,), chosen_rewards (b,), rejected_rewards (b,))``, rewards detached.
        The mean of `losses` is TRL's loss.
    """
    check_hparam("reward", "center_rewards_coefficient", center_rewards_coefficient, low=0.0)
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
            f"{tuple(rejected_rewards.shape)} differ"
        )
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return LossOutput(losses, chosen_rewards.detach(), rejected_rewards.detach())
