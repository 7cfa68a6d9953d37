"""alignkit.train: the training loops (`run`: DPO family, SFT, KTO, reward; `ppo`: PPO, RLOO, GRPO).

The package is callable: `alignkit.train(config, data)` is `alignkit.api.train`."""

from alignkit import _callable_package

_callable_package(__name__, "train")
