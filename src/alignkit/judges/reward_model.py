"""A learned judge: a finished `method: reward` run scores (prompt, answer) pairs.

The answers are tokenized with the reward model's own tokenizer and chat template (so a reward model
can judge any policy's text) and scored at their EOS token, minus the run's centring offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alignkit.data.formats import SFTRow
from alignkit.data.tokenize import tokenize_sft_rows


class RewardModelJudge:
    """`judge(prompts, responses, meta) -> scores` backed by a reward run (see alignkit.reward_model)."""

    def __init__(self, run: str | Path, *, device="cpu", batch_size: int = 16, max_length: int = 512,
                 where: str | None = None):
        from alignkit.reward_model import load_reward_run

        self.run = Path(run)
        self.name = f"reward:{self.run}"
        self.model, self.tokenizer, self.offset = load_reward_run(run, device=device, where=where)
        self.batch_size = batch_size
        self.max_length = max_length

    def check_tokenizer(self, tokenizer, where: str) -> None:
        """Refuse a policy whose tokenizer differs from the reward model's: the reward model was
        trained on its own token ids, and a different vocabulary means it judges another model's text."""
        from alignkit.errors import UserError

        if tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise UserError(f"the reward model {self.run} was trained with a different tokenizer "
                            f"({len(self.tokenizer)} tokens) than the policy ({len(tokenizer)} tokens)",
                            where=where, hint="train the reward model from the same base model as the policy")

    def __call__(self, prompts: Sequence[Sequence[dict]], responses: Sequence[str],
                 meta: Sequence[dict] | None = None) -> list[float]:
        from alignkit.reward_model import score_items

        rows = [SFTRow(prompt=tuple(p), completion=r, source=f"answer {i}")
                for i, (p, r) in enumerate(zip(prompts, responses, strict=True))]
        items, _ = tokenize_sft_rows(self.tokenizer, rows, max_length=self.max_length,
                                     max_prompt_length=self.max_length // 2)
        return score_items(self.model, items, self.tokenizer.pad_token_id, batch_size=self.batch_size,
                           offset=self.offset).tolist()
