"""Where lmpt keeps what it can recompute: feature caches, the generated world, its small CLIP."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union


def default_cache_dir() -> Path:
    """``$LMPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmpt``, else ``~/.cache/lmpt``."""
    env = os.environ.get("LMPT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lmpt"


def resolve_cache_dir(cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """The given folder, or the default one; created if missing."""
    path = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    from .io import make_dir

    return make_dir(path, "cache folder")
