"""Hub access is opt-in: alignkit reads models from local directories and the local Hugging Face
cache only, unless the user sets `ALIGNKIT_ALLOW_DOWNLOAD=1`. (A module of its own, without torch,
so that the command line can decide this before importing anything heavy.)"""

from __future__ import annotations

import os

ALLOW_DOWNLOAD_ENV = "ALIGNKIT_ALLOW_DOWNLOAD"


def downloads_allowed() -> bool:
    """True when the user opted in to hub downloads (`ALIGNKIT_ALLOW_DOWNLOAD=1`); off by default."""
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")
