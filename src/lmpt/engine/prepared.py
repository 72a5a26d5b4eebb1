"""From a config to what a run reads: the data set, the frozen backbone, cached image features, captions."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader

from ..backbone import CLIPBackbone, create_clip
from ..batchnorm import adapt_batchnorm, batchnorm_layers, has_batchnorm
from ..data.dataset import MultiLabelDataset, MultiLabelSplit
from ..data.features import default_num_workers, extract_features
from ..data.images import ImageListDataset, PreprocessConfig, reraise_data_errors, transform_from_signature
from ..data.sources import load_dataset
from ..errors import ConfigError
from ..precision import autocast
from ..progress import progress
from ..prompts import CaptionEmbeddings, embed_captions
from .config import Config

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Everything a run reads, built once and shared by the runs of a sweep.

    ``features[split]`` is ``[N, V, D]`` float32 on the CPU: V = 2 (plain, mirrored) for train, 1 otherwise.
    """

    dataset: MultiLabelDataset
    backbone: CLIPBackbone
    features: dict[str, Optional[torch.Tensor]]

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device={name} but no CUDA GPU is visible; use run.device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"run.device={name} but only {torch.cuda.device_count()} CUDA GPU(s) are visible "
                              f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"run.device={name} but this torch has no usable MPS (Apple GPU) backend; use "
                              "run.device=cpu or auto")
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return device


def dataset_from_config(cfg: Config) -> MultiLabelDataset:
    """The :class:`MultiLabelDataset` a config's ``data`` section names."""
    d = cfg.data
    return load_dataset(d.dataset, root=d.root, train=d.train, val=d.val, test=d.test, classes=d.classes,
                        image_root=d.image_root, class_names=d.class_names, val_fraction=d.val_fraction,
                        split_seed=d.split_seed)


def backbone_from_config(cfg: Config) -> CLIPBackbone:
    m = cfg.model
    return create_clip(m.backbone, m.pretrained, quick_gelu=m.quick_gelu, seed=cfg.run.seed)


def split_features(cfg: Config, backbone: CLIPBackbone, split: MultiLabelSplit, device: torch.device,
                   flips: bool = False, preprocess: Optional[str] = None) -> torch.Tensor:
    """Cached features of one split with the config's extraction settings (``preprocess`` overrides the mode)."""
    d = cfg.data
    return extract_features(backbone, split, preprocess=PreprocessConfig(mode=preprocess or d.preprocess), flips=flips,
                            cache_dir=d.feature_cache_dir or d.cache_dir, device=device,
                            batch_size=d.feature_batch_size, chunk_size=d.feature_chunk_size,
                            num_workers=d.num_workers, precision=cfg.run.precision, progress=cfg.run.progress,
                            decode=d.decode)


def adapt_backbone(cfg: Config, backbone: CLIPBackbone, split: MultiLabelSplit, device: torch.device) -> int:
    """``model.batchnorm=adapt``: re-estimate the image tower's BatchNorm statistics on ``split`` (the training
    preprocessing, every image plain and mirrored, batches of ``data.feature_batch_size`` images) as a cumulative
    average (:func:`lmpt.batchnorm.adapt_batchnorm`); the backbone's fingerprint (and so the feature cache key)
    changes with them. Returns the number of batches."""
    d = cfg.data
    signature = PreprocessConfig(mode=d.preprocess).resolve(backbone)
    transforms = [transform_from_signature(signature), transform_from_signature(signature, flip=True)]
    workers = default_num_workers() if d.num_workers is None else d.num_workers
    loader = DataLoader(ImageListDataset(split.paths, transforms), batch_size=d.feature_batch_size,
                        num_workers=workers if len(split) > 64 else 0)
    visual = backbone.model.visual.to(device)

    def batches():
        bar = progress(len(split), "batchnorm statistics", unit="img", enabled=cfg.run.progress)
        for _, images in reraise_data_errors(loader):
            yield images.flatten(0, 1).to(device)
            bar.update(images.shape[0])
        bar.close()

    with autocast(device, cfg.run.precision):
        n = adapt_batchnorm(visual, batches())
    backbone.refresh_fingerprint()
    logger.info("model.batchnorm=adapt: %d BatchNorm layers re-estimated on %d training images (plain and mirrored) "
                "in %d batches; backbone fingerprint %s", len(batchnorm_layers(visual)), len(split), n,
                backbone.fingerprint)
    return n


def prepare(cfg: Config, device: Optional[torch.device] = None,
            dataset: Optional[MultiLabelDataset] = None) -> Prepared:
    """Load the data set (unless given) and backbone, and fetch (or compute) the cached image features."""
    device = device or resolve_device(cfg.run.device)
    dataset = dataset if dataset is not None else dataset_from_config(cfg)
    backbone = backbone_from_config(cfg)
    mode = cfg.model.batchnorm
    if mode != "frozen" and not has_batchnorm(backbone.model.visual):
        logger.info("model.batchnorm=%s: %s has no BatchNorm layer, so it computes what frozen does", mode,
                    backbone.model_name)
    elif mode == "adapt":
        adapt_backbone(cfg, backbone, dataset.train, device)
    features: dict[str, Optional[torch.Tensor]] = {
        "train": split_features(cfg, backbone, dataset.train, device, flips=True),
        "val": split_features(cfg, backbone, dataset.val, device) if dataset.val is not None else None,
        "test": split_features(cfg, backbone, dataset.test, device),
    }
    backbone.model.to("cpu")
    return Prepared(dataset=dataset, backbone=backbone, features=features)


def class_name_captions(split: MultiLabelSplit, class_names: list[str]) -> list[str]:
    """Captions built from the labels: 'a photo of a dog, a cat and a sofa.'"""
    out = []
    for row in split.labels:
        names = [f"a {class_names[c]}" for c in row.nonzero()[0]]
        text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1] if names else "a photo"
        out.append(f"a photo of {text}.")
    return out


def train_captions(cfg: Config, dataset: MultiLabelDataset) -> Optional[list[str]]:
    """The captions the CSE loss uses, or None when there are none (see ``data.captions``)."""
    split = dataset.train
    mode = cfg.data.captions
    if mode == "off":
        return None
    if mode == "class-names":
        return class_name_captions(split, dataset.class_names)
    if split.captions is None or not any(c.strip() for c in split.captions):
        return None
    return split.captions


def caption_embeddings(cfg: Config, prepared: Prepared, length: Optional[int] = None) -> Optional[CaptionEmbeddings]:
    captions = train_captions(cfg, prepared.dataset)
    if captions is None:
        return None
    model = prepared.backbone.model
    return embed_captions(captions, model.token_embedding, prepared.backbone.tokenizer, length=length,
                          max_chars=cfg.data.caption_chars)
