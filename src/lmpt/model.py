"""The prompt-tuned CLIP classifier: frozen CLIP + class prompts -> multi-label logits.

``logits[b, c] = exp(logit_scale) * cos(image_feature_b, text_feature_c)`` with CLIP's frozen logit scale
(100 for OpenAI weights). Image features usually come from the feature cache, so training never runs
the image encoder.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import CLIPBackbone
from .errors import CheckpointError
from .prompts import PromptConfig, PromptLearner, encode_token_embeddings


def cosine_logits(image_features: torch.Tensor, text_features: torch.Tensor, scale: float,
                  normalize_images: bool = True) -> torch.Tensor:
    """``scale * cos(image_b, text_c)`` as ``[B, C]``: the one scoring rule of every method.

    ``text_features`` must be L2-normalised; ``image_features`` are normalised here unless
    ``normalize_images=False`` says they already are.
    """
    img = image_features.to(text_features.dtype)
    if normalize_images:
        img = F.normalize(img, dim=-1)
    return scale * img @ text_features.t()


class PromptCLIP(nn.Module):
    """Frozen CLIP with a trainable :class:`PromptLearner`; only ``prompt_learner.ctx`` trains."""

    def __init__(self, backbone: CLIPBackbone, class_names: Sequence[str],
                 prompt_cfg: Optional[PromptConfig] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.clip = backbone.model.eval().requires_grad_(False)
        self.prompt_learner = PromptLearner(class_names, self.clip.token_embedding, backbone.tokenizer,
                                            prompt_cfg)

    @property
    def class_names(self) -> list[str]:
        return self.prompt_learner.class_names

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.detach().exp()

    def train(self, mode: bool = True) -> "PromptCLIP":
        super().train(mode)
        self.clip.eval()  # frozen: dropout and batch-norm statistics stay as loaded
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.prompt_learner.parameters() if p.requires_grad]

    def encode_text(self, normalize: bool = True) -> torch.Tensor:
        """Class text features ``[C, D]`` from the current prompts (one transformer pass)."""
        x = self.prompt_learner()
        feats = encode_token_embeddings(self.clip, x, self.prompt_learner.eot)
        return F.normalize(feats, dim=-1) if normalize else feats

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Frozen image features ``[B, D]``."""
        feats = self.clip.encode_image(images)
        return F.normalize(feats, dim=-1) if normalize else feats

    def logits(self, image_features: torch.Tensor, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scaled cosine logits ``[B, C]``; ``image_features`` need not be normalised."""
        if text_features is None:
            text_features = self.encode_text()
        return cosine_logits(image_features, text_features, float(self.logit_scale))

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logits(image_features)

    def prompt_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: the learned context."""
        return {"ctx": self.prompt_learner.ctx.detach().to("cpu", torch.float32, copy=True).contiguous()}

    def load_prompt_state(self, state: dict[str, torch.Tensor]) -> None:
        ctx = state["ctx"]
        if ctx.shape != self.prompt_learner.ctx.shape:
            raise CheckpointError(f"context shape {tuple(ctx.shape)} does not match the model's "
                             f"{tuple(self.prompt_learner.ctx.shape)}")
        with torch.no_grad():
            self.prompt_learner.ctx.copy_(ctx.to(self.prompt_learner.ctx))


class LinearProbe(nn.Module):
    """``Linear(D, C)`` on frozen image features: the reference's "CLIP fine-tune" baseline (``finetune_clip/fc.py``).

    ``input="scaled"`` (default): the input is the L2-normalised image feature times CLIP's logit scale (scaling
    a unit vector makes the zero-shot initialisation exact and keeps AdamW's step size meaningful whatever the
    backbone's feature norm). ``input="raw"``: the raw image feature, as the reference feeds it
    (``logits = W x + b``). ``init_text_features`` (``[C, D]``, normalised) starts the layer at zero-shot CLIP:
    weights = class text features, bias = 0 (exactly zero-shot's logits with the scaled input only).
    """

    INPUTS = ("scaled", "raw")

    def __init__(self, dim: int, num_classes: int, scale: float,
                 init_text_features: Optional[torch.Tensor] = None, input: str = "scaled") -> None:
        super().__init__()
        if input not in self.INPUTS:
            raise ValueError(f"input must be one of {', '.join(self.INPUTS)}, got {input!r}")
        self.input = input
        self.scale = float(scale)
        self.linear = nn.Linear(dim, num_classes)
        if init_text_features is not None:
            if tuple(init_text_features.shape) != (num_classes, dim):
                raise ValueError(f"init_text_features must be [{num_classes}, {dim}], got "
                                 f"{tuple(init_text_features.shape)}")
            with torch.no_grad():
                self.linear.weight.copy_(init_text_features)
                self.linear.bias.zero_()

    def forward(self, image_features: torch.Tensor, normalize_images: bool = True) -> torch.Tensor:
        """Logits ``[B, C]``; ``normalize_images=False`` says scaled-input features are normalised already."""
        x = image_features.to(self.linear.weight.dtype)
        if self.input == "raw":
            return self.linear(x)
        if normalize_images:
            x = F.normalize(x, dim=-1)
        return self.linear(self.scale * x)

