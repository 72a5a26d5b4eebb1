"""Where a trainer's image features come from: the feature cache, or the image tower itself in the reference's
BatchNorm regime (``model.batchnorm=train``, :mod:`lmpt.batchnorm`).

Both sources answer the same two questions: the features of a batch of training rows with their flips, and
the features of a whole split for evaluation. :func:`image_features` picks one from the config.
"""
from __future__ import annotations

import copy
import logging
from typing import Optional, Union

import torch
import torch.nn.functional as F

from ...batchnorm import batchnorm_state, has_batchnorm, load_batchnorm_state, set_batchnorm_training
from ...data.images import PreprocessConfig, load_images_uint8, normalize_uint8
from ...data.features import default_num_workers
from ...precision import autocast
from ..config import Config
from ..prepared import Prepared

logger = logging.getLogger(__name__)


class CachedImageFeatures:
    """Features from the feature cache: ``[N, 2, D]`` for train (plain, mirrored), ``[N, 1, D]`` otherwise."""

    live = False

    def __init__(self, prepared: Prepared, device: torch.device, normalize: bool = True) -> None:
        self.prepared = prepared
        self.normalize = normalize
        train = prepared.features["train"].float()
        self.train_feats = (F.normalize(train, dim=-1) if normalize else train).to(device)

    def train_batch(self, idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        return self.train_feats[idx, flip]

    def split(self, split: str) -> Optional[torch.Tensor]:
        return self.prepared.features.get(split)

    def train(self) -> None:
        """Nothing to do: cached features do not depend on the mode."""

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Cached features have no state."""


class LiveImageFeatures:
    """The reference's regime: the image tower (a private copy) encodes every training batch with its BatchNorm
    layers in training mode (batch statistics; running statistics updated with momentum 0.1), and every
    evaluation encodes the split with the drifted running statistics. Images are decoded once and kept as
    uint8 (the resize and crop of the run's preprocessing); the flips are exact mirrors."""

    live = True

    def __init__(self, cfg: Config, prepared: Prepared, device: torch.device, normalize: bool = True,
                 batch_size: Optional[int] = None) -> None:
        self.prepared = prepared
        self.device = device
        self.normalize = normalize
        self.precision = cfg.run.precision
        self.batch_size = batch_size or cfg.data.feature_batch_size
        self.visual = copy.deepcopy(prepared.backbone.model.visual).to(device).eval()
        self.signature = PreprocessConfig(mode=cfg.data.preprocess).resolve(prepared.backbone)
        workers = default_num_workers() if cfg.data.num_workers is None else cfg.data.num_workers
        ds = prepared.dataset
        self.images = {name: load_images_uint8(split.paths, self.signature, workers)
                       for name, split in (("train", ds.train), ("val", ds.val), ("test", ds.test)) if split is not None}
        self.training = False

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            feats = self.visual(normalize_uint8(x.to(self.device), self.signature)).float()
        return F.normalize(feats, dim=-1) if self.normalize else feats

    @torch.no_grad()
    def train_batch(self, idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        x = self.images["train"][idx.cpu()]
        mirrored = flip.cpu().bool()
        x[mirrored] = torch.flip(x[mirrored], dims=(-1,))
        return self._encode(x)

    @torch.no_grad()
    def split(self, split: str) -> Optional[torch.Tensor]:
        """``[N, 1, D]`` features of a split with the current (drifted) running statistics."""
        images = self.images.get(split)
        if images is None:
            return None
        set_batchnorm_training(self.visual, False)
        try:
            parts = [self._encode(images[i:i + self.batch_size]).cpu() for i in range(0, len(images), self.batch_size)]
        finally:
            set_batchnorm_training(self.visual, self.training)
        feats = torch.cat(parts) if parts else torch.zeros(0, self.prepared.backbone.embed_dim)
        return feats[:, None]

    def train(self) -> None:
        self.training = True
        set_batchnorm_training(self.visual, True)

    def state(self) -> dict[str, torch.Tensor]:
        """The running statistics: part of a resumable run's state and of its classifier file."""
        return batchnorm_state(self.visual)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        load_batchnorm_state(self.visual, state)


ImageFeatures = Union[CachedImageFeatures, LiveImageFeatures]


def image_features(cfg: Config, prepared: Prepared, device: torch.device, normalize: bool = True) -> ImageFeatures:
    """The feature source ``model.batchnorm`` asks for (``train``: live; ``frozen``/``adapt``: the cache)."""
    if cfg.model.batchnorm == "train" and has_batchnorm(prepared.backbone.model.visual):
        return LiveImageFeatures(cfg, prepared, device, normalize)
    return CachedImageFeatures(prepared, device, normalize)
