"""The world's small CLIP: its open_clip architecture (``lmpt-world-tiny.json``), tokenizer and image transform."""
from __future__ import annotations

import json
from pathlib import Path

from ..data.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

WORLD_MODEL_NAME = "lmpt-world-tiny"
WORLD_CONTEXT_LENGTH = 32
CONFIG_PATH = Path(__file__).with_name(f"{WORLD_MODEL_NAME}.json")
# The open_clip config of the world's CLIP, shipped as lmpt-world-tiny.json beside this file.
WORLD_MODEL_CONFIG = json.loads(CONFIG_PATH.read_text(encoding="utf-8"))
IMAGE_MEAN = OPENAI_CLIP_MEAN  # open_clip's (OpenAI) defaults
IMAGE_STD = OPENAI_CLIP_STD


def register_world_models() -> None:
    """Make ``open_clip.create_model("lmpt-world-tiny")`` work (idempotent)."""
    from ..backbone import register_model_configs

    register_model_configs(CONFIG_PATH)


def get_world_tokenizer():
    """The CLIP BPE tokenizer at the world model's context length (32): ``tok(list_of_str) -> [N, 32]``.

    It is open_clip's ``SimpleTokenizer`` (the OpenAI CLIP vocabulary, 49408 tokens), as
    returned by ``open_clip.get_tokenizer("lmpt-world-tiny")`` once the model is registered.
    """
    import open_clip

    register_world_models()
    return open_clip.get_tokenizer(WORLD_MODEL_NAME)
