"""Shared fixtures: tiny open_clip architectures (no downloads), seeded RNGs."""
from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY_VIT = "lmpt-test-vit"
TINY_RN = "lmpt-test-rn"

_CONFIGS = {
    TINY_VIT: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    TINY_RN: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}


@pytest.fixture(scope="session", autouse=True)
def tiny_model_configs(tmp_path_factory):
    """Register the tiny architectures with open_clip for the whole session."""
    import open_clip

    folder = tmp_path_factory.mktemp("model_configs")
    for name, cfg in _CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    os.environ["LMPT_MODEL_CONFIGS"] = str(folder)  # for subprocesses (CLI, torchrun)
    return folder


@pytest.fixture
def tiny_backbone():
    from lmpt.backbone import create_clip

    return create_clip(TINY_VIT, pretrained=None, seed=0)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small long-tailed multi-label manifest data set (coloured shapes, captions) on disk."""
    from engine_helpers import make_tiny_dataset

    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))
