"""Moved to `alignkit.judges.refusal` (below both eval and data/doctor); kept so old imports work."""

from alignkit.judges.refusal import *  # noqa: F401,F403
