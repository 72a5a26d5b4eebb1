"""lmpt: long-tailed multi-label recognition with CLIP prompt tuning (LMPT, arXiv 2305.04536)."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_classifier"]


def __getattr__(name: str):
    """``lmpt.load_classifier`` without importing torch at ``import lmpt`` (the CLI starts faster)."""
    if name == "load_classifier":
        from .deploy import load_classifier

        return load_classifier
    raise AttributeError(f"module 'lmpt' has no attribute {name!r}")
