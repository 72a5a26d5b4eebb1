"""The ``probe`` kind (the ``linear-probe`` method): ``Linear(D, C)`` trained on the cached frozen image features.

The reference's "CLIP fine-tune" row (``finetune_clip/fc.py``) trains ``Linear(1024, C)`` on CLIP's image
features with the DB loss and AdamW (lr 1e-4); its attempt to freeze the image encoder is a no-op, but its
optimiser only holds the linear layer, so it is a linear probe (with RN50's batch-norm statistics drifting in
train mode). Here the features come from the feature cache (both flips of every training image, like the
prompt methods), so a run takes seconds.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ...model import LinearProbe
from ...zeroshot import zeroshot_text_features
from ..config import Config
from ..methods import METHOD_KINDS, Head
from ..prepared import Prepared
from .image_features import image_features
from .loss import resolve_loss


class ProbeTrainer:
    """The probe, loss and cached tensors of one linear-probe run (a :class:`~.trainer.Trainer`)."""

    kind = METHOD_KINDS["probe"]
    distributed = False  # every rank computes the same full loss: nothing to sum

    def __init__(self, cfg: Config, prepared: Prepared, device: torch.device) -> None:
        self.cfg = cfg
        self.prepared = prepared
        self.device = device
        ds = prepared.dataset
        backbone = prepared.backbone
        scale = backbone.logit_scale
        init = None
        if cfg.probe.init == "zeroshot":
            init = zeroshot_text_features(backbone, ds.class_names, cfg.run.templates, device="cpu")
            backbone.model.to("cpu")
        torch.manual_seed(cfg.run.seed)
        self.model = LinearProbe(backbone.embed_dim, ds.num_classes, scale, init, input=cfg.probe.input).to(device)
        self.loss_decision = resolve_loss(cfg, ds, uses_captions=False)
        self.loss_fn = self.loss_decision.build(ds).to(device)
        self.params = list(self.model.parameters())
        self.images = image_features(cfg, prepared, device, normalize=cfg.probe.input == "scaled")
        self.capturable = not self.images.live
        self.train_labels = torch.as_tensor(ds.train.labels, dtype=torch.float32, device=device)

    uses_cse = False

    def train(self) -> None:
        self.model.train()
        self.images.train()

    def loss(self, idx: torch.Tensor, flip: torch.Tensor) -> dict[str, Optional[torch.Tensor]]:
        logits = self.model(self.images.train_batch(idx, flip), normalize_images=False)
        return self.loss_fn(logits, self.train_labels[idx])

    def all_reduce_grads(self) -> None:
        """Every rank computes the same full loss: nothing to sum."""

    @torch.no_grad()
    def logits(self, split: str) -> Optional[torch.Tensor]:
        feats = self.images.split(split)
        if feats is None:
            return None
        x = feats[:, 0] if feats.dim() == 3 else feats
        return torch.cat([self.model(x[i:i + 8192].to(self.device).float()).cpu() for i in range(0, len(x), 8192)]) \
            if len(x) else torch.zeros(0, self.prepared.dataset.num_classes)

    def state(self) -> dict[str, torch.Tensor]:
        probe = {k: v.detach().to("cpu", torch.float32, copy=True).contiguous() for k, v in self.model.state_dict().items()}
        return {**probe, **self.images.state()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self.model.state_dict()
        self.model.load_state_dict({k: v.to(self.device) for k, v in state.items() if k in own})
        self.images.load_state(state)


def probe_head(meta: dict[str, Any], tensors: dict[str, torch.Tensor], backbone) -> Head:
    """The classifier of a probe run's file: the layer on normalised features with CLIP's logit scale folded in,
    or on raw features (``probe.input=raw``)."""
    weight, bias = tensors["linear.weight"], tensors["linear.bias"]
    if meta["config"]["probe"].get("input", "scaled") == "raw":
        return Head(weight, bias, normalize_features=False)
    return Head(weight * backbone.logit_scale, bias)
