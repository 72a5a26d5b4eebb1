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
from .prompts import PromptConfig, PromptLearner, encode_token_embeddings


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
        img = F.normalize(image_features.to(text_features.dtype), dim=-1)
        return self.logit_scale.to(img.dtype) * img @ text_features.t()

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logits(image_features)

    def prompt_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: the learned context."""
        return {"ctx": self.prompt_learner.ctx.detach().to("cpu", torch.float32, copy=True).contiguous()}

    def load_prompt_state(self, state: dict[str, torch.Tensor]) -> None:
        ctx = state["ctx"]
        if ctx.shape != self.prompt_learner.ctx.shape:
            raise ValueError(f"context shape {tuple(ctx.shape)} does not match the model's "
                             f"{tuple(self.prompt_learner.ctx.shape)}")
        with torch.no_grad():
            self.prompt_learner.ctx.copy_(ctx.to(self.prompt_learner.ctx))


def build_prompt_model(backbone: CLIPBackbone, class_names: Sequence[str],
                       prompt_cfg: Optional[PromptConfig] = None) -> PromptCLIP:
    """Factory for :class:`PromptCLIP`."""
    return PromptCLIP(backbone, class_names, prompt_cfg)
