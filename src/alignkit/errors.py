"""The one exception type for mistakes a user can fix.

The CLI prints a `UserError` without a traceback: what is wrong, where (file:line, field), and what
to do. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (file, config, arguments), not a bug in alignkit.

    Args:
        message: what is wrong, in one sentence.
        where: the place: ``"data/train.jsonl:17 field 'chosen'"``, ``"config field train.beta"``.
        hint: what to do about it.
    """

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text
