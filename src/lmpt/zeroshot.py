"""Zero-shot CLIP classifier weights from prompt templates.

* ``ensemble``: CLIP's 80 ImageNet templates, each encoded and L2-normalised, averaged per class
  (Radford et al.), the usual prompt-ensemble baseline.
* ``reference``: the LMPT reference's text: all templates joined with spaces and cut to 76
  characters (in practice the first two or three templates), encoded once.
* ``simple``: the single prompt ``"a photo of a {name}."``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .backbone import CLIPBackbone
from .registry import Registry


def imagenet_templates() -> list[Callable[[str], str]]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


# Template modes by name: each maps a class name to the texts whose features are averaged.
TEMPLATE_MODES: Registry[Callable[[str], list[str]]] = Registry("template mode")
TEMPLATE_MODES.register("ensemble", lambda name: [t(name) for t in imagenet_templates()])
TEMPLATE_MODES.register("reference", lambda name: [" ".join(t(name) for t in imagenet_templates())[:76]])
TEMPLATE_MODES.register("simple", lambda name: [f"a photo of a {name}."])


def class_texts(name: str, mode: str) -> list[str]:
    """The prompt texts for one class under a template mode."""
    return TEMPLATE_MODES.lookup(mode)(name)


@torch.no_grad()
def zeroshot_text_features(backbone: CLIPBackbone, class_names: Sequence[str], mode: str = "ensemble",
                           device: torch.device | str = "cpu", batch_size: int = 256) -> torch.Tensor:
    """Normalised class text features ``[C, D]`` for zero-shot scoring."""
    model = backbone.model.to(device)
    out = []
    for name in class_names:
        tokens = backbone.tokenizer(class_texts(name, mode))
        feats = torch.cat([model.encode_text(tokens[i:i + batch_size].to(device)).float()
                           for i in range(0, len(tokens), batch_size)])
        out.append(F.normalize(F.normalize(feats, dim=-1).mean(dim=0), dim=-1))
    return torch.stack(out)
