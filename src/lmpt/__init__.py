"""lmpt: long-tailed multi-label recognition with CLIP prompt tuning (LMPT, arXiv 2305.04536)."""
from __future__ import annotations

__version__ = "0.1.0"
