"""What a validated config settles before it is used or saved: the number of context tokens ``model.ctx_init``
gives, and absolute data paths, so that config.yaml says what is trained and works from any folder.

(Like :mod:`.validation`, this module takes the config objects of :mod:`.config`, which imports it.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError


def settle(cfg: Any, explicit_n_ctx: bool) -> None:
    """Settle ``cfg`` in place (``explicit_n_ctx``: whether the user set ``model.n_ctx`` themselves)."""
    _settle_n_ctx(cfg, explicit_n_ctx)
    _resolve_paths(cfg)


def _settle_n_ctx(cfg: Any, explicit: bool) -> None:
    """``model.ctx_init`` sets the number of context tokens: record it as ``model.n_ctx`` (refuse a different,
    explicitly given n_ctx), so config.yaml says what is trained."""
    if not cfg.model.ctx_init:
        return
    from ..prompts import ctx_init_length

    n = ctx_init_length(cfg.model.ctx_init)
    if n < 1:
        raise ConfigError(f"model.ctx_init={cfg.model.ctx_init!r} gives no tokens; give words such as 'a photo of a'")
    if n > 64:
        raise ConfigError(f"model.ctx_init={cfg.model.ctx_init!r} gives {n} tokens; at most 64 context tokens fit")
    if explicit and cfg.model.n_ctx != n:
        raise ConfigError(f"model.ctx_init={cfg.model.ctx_init!r} gives {n} context tokens but model.n_ctx="
                          f"{cfg.model.n_ctx}: ctx_init sets the number of tokens; drop model.n_ctx (or set it to {n})")
    cfg.model.n_ctx = n


_PATH_KEYS = ("root", "train", "val", "test", "classes", "image_root", "cache_dir", "feature_cache_dir")


def _resolve_paths(cfg: Any) -> None:
    """Relative data paths (and a weights file) become absolute, so a run's saved config works from any folder;
    data that moved is pointed to with overrides (``lmpt eval RUN data.root=/new/place``)."""
    for key in _PATH_KEYS:
        value = getattr(cfg.data, key)
        if isinstance(value, str) and value.strip():
            setattr(cfg.data, key, str(Path(value).expanduser().resolve()))
    pretrained = cfg.model.pretrained
    if isinstance(pretrained, str) and pretrained.strip() and Path(pretrained).expanduser().exists():
        cfg.model.pretrained = str(Path(pretrained).expanduser().resolve())
