"""The ``prompt`` kind: prompt tuning on cached image features (LMPT, CoOp, CoOp + DB, and custom losses).

Each step encodes the C class prompts with the frozen text transformer (cut to the longest EOT + 1),
scores a batch of cached image features, and computes ``lam * L_cls + (1 - lam) * L_cse``. No image is
decoded or encoded during training.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ...model import PromptCLIP, cosine_logits
from ...precision import autocast
from ...prompts import cse_length, encode_token_embeddings
from ..config import Config
from ..methods import METHOD_KINDS, Head
from ..prepared import Prepared, caption_embeddings
from ..rundir.scoring import logits_from_features
from .builders import build_prompt_model, prompt_config
from .image_features import image_features
from .loss import resolve_loss
from .step import ClassShard

logger = logging.getLogger(__name__)


class PromptTrainer:
    """The model, loss and cached tensors of one prompt-tuning run (a :class:`~.trainer.Trainer`)."""

    kind = METHOD_KINDS["prompt"]

    def __init__(self, cfg: Config, prepared: Prepared, device: torch.device) -> None:
        self.cfg = cfg
        self.prepared = prepared
        self.device = device
        ds = prepared.dataset
        self.model = build_prompt_model(cfg, prepared.backbone, prepared.class_names, device)
        self.loss_decision = resolve_loss(cfg, ds)
        self.loss_fn = self.loss_decision.build(ds).to(device)
        self.params = self.model.trainable_parameters()
        self.shard = ClassShard(ds.num_classes, device)
        self.distributed = self.shard.active
        self.images = image_features(cfg, prepared, device)
        self.capturable = not self.images.live
        self.train_labels = torch.as_tensor(ds.train.labels, dtype=torch.float32, device=device)
        self.scale = float(self.model.logit_scale)
        pl = self.model.prompt_learner
        self.prompt_len = pl.seq_len
        self.eot = pl.eot[self.shard.start:self.shard.stop]
        self.captions = None
        self.cse_len = self.prompt_len
        if self.loss_fn.cse_loss is not None:
            caps = caption_embeddings(cfg, prepared)
            self.cse_len = cse_length(caps.length, self.prompt_len, cfg.loss.cse_shift, pl.context_length)
            caps = caption_embeddings(cfg, prepared, length=self.cse_len)
            self.captions = (caps.embeddings.to(device), caps.mask.to(device))

    @property
    def uses_cse(self) -> bool:
        return self.loss_fn.cse_loss is not None

    def train(self) -> None:
        self.model.train()
        self.images.train()

    def text_features(self, prompts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalised class features ``[C, D]`` (gathered across ranks)."""
        if prompts is None:
            prompts = self.model.prompt_learner(self.prompt_len)
        own = prompts[self.shard.start:self.shard.stop, : self.prompt_len]
        with autocast(self.device, self.cfg.run.precision):
            feats = encode_token_embeddings(self.model.clip, own, self.eot)
        return self.shard.gather(F.normalize(feats.float(), dim=-1))

    def loss(self, idx: torch.Tensor, flip: torch.Tensor) -> dict[str, Optional[torch.Tensor]]:
        """Loss terms for the batch of training rows ``idx`` with flip variants ``flip``."""
        prompts = self.model.prompt_learner(max(self.prompt_len, self.cse_len))
        text = self.text_features(prompts)
        logits = cosine_logits(self.images.train_batch(idx, flip), text, self.scale, normalize_images=False)
        y = self.train_labels[idx]
        if self.captions is None:
            return self.loss_fn(logits, y)
        cap, mask = self.captions
        cse_prompts = self.shard.own_rows_only(prompts[:, : self.cse_len])
        return self.loss_fn(logits, y, caption_emb=cap[idx], prompt_emb=cse_prompts, caption_mask=mask[idx])

    def all_reduce_grads(self) -> None:
        self.shard.all_reduce_grads(self.params)

    @torch.no_grad()
    def logits(self, split: str) -> Optional[torch.Tensor]:
        """Logits of a split's image features with the current prompts (None without that split)."""
        feats = self.images.split(split)
        if feats is None:
            return None
        return logits_from_features(feats, self.text_features(), self.scale)

    def state(self) -> dict[str, torch.Tensor]:
        """The learned weights (what checkpoints store), and the drifted BatchNorm statistics under
        ``model.batchnorm=train``."""
        return {**self.model.prompt_state(), **self.images.state()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_prompt_state(state)
        self.images.load_state(state)


def prompt_head(meta: dict[str, Any], tensors: dict[str, torch.Tensor], backbone) -> Head:
    """The classifier of a prompt run's file: the learned prompts' text features times CLIP's logit scale."""
    prompt = PromptCLIP(backbone, list(meta["class_names"]), prompt_config(meta["config"]["model"]))
    prompt.load_prompt_state(tensors)
    text = prompt.encode_text()
    return Head(backbone.logit_scale * F.normalize(text.float(), dim=-1), torch.zeros(len(meta["class_names"])))
