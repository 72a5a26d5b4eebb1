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

TEMPLATE_MODES = ("ensemble", "reference", "simple")


def imagenet_templates() -> list[Callable[[str], str]]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


def class_texts(name: str, mode: str) -> list[str]:
    """The prompt texts for one class under a template mode."""
    if mode == "simple":
        return [f"a photo of a {name}."]
    templates = imagenet_templates()
    if mode == "ensemble":
        return [t(name) for t in templates]
    if mode == "reference":
        return [" ".join(t(name) for t in templates)[:76]]
    raise ValueError(f"unknown template mode {mode!r}; expected one of {TEMPLATE_MODES}")


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
