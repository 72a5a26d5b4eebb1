"""From a config to what training needs: the data set, the frozen backbone, cached features, captions."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from ..backbone import CLIPBackbone, create_clip
from ..data.dataset import MultiLabelDataset, MultiLabelSplit
from ..data.features import PreprocessConfig, extract_features
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
    world: Optional[object] = None

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from ..errors import ConfigError

        raise ConfigError(f"run.device={name} but no CUDA GPU is visible; use run.device=cpu or auto")
    return device


def load_dataset(cfg: Config):
    """Build the :class:`MultiLabelDataset` a config names (and the world info for ``dataset=world``)."""
    d = cfg.data
    world = None
    if d.dataset in ("voc-lt", "coco-lt"):
        from ..data.benchmarks import load_benchmark

        dataset = load_benchmark(d.dataset, d.root, val_fraction=d.val_fraction, seed=d.split_seed,
                                 class_names=d.class_names)
    elif d.dataset == "manifest":
        from ..data.manifest import load_manifest_dataset

        dataset = load_manifest_dataset(d.train, d.test, val=d.val, classes=d.classes, image_root=d.image_root,
                                        val_fraction=0.0 if d.val else d.val_fraction, seed=d.split_seed)
    else:  # world
        from ..world import build_world, load_world_dataset

        world = build_world(cache_dir=d.cache_dir, num_classes=d.world_classes, seed=d.world_seed,
                            progress=cfg.run.progress)
        dataset = load_world_dataset(world)
    return dataset, world


def backbone_from_config(cfg: Config, world: Optional[object] = None) -> CLIPBackbone:
    m = cfg.model
    backbone, pretrained = m.backbone, m.pretrained
    if cfg.data.dataset == "world" and world is not None:
        if backbone == "world":  # the world's own small CLIP
            backbone, pretrained = world.clip_model_name, str(world.clip_weights)
    return create_clip(backbone, pretrained, quick_gelu=m.quick_gelu, seed=cfg.run.seed)


def prepare(cfg: Config, device: Optional[torch.device] = None,
            loaded: Optional[tuple[MultiLabelDataset, Optional[object]]] = None) -> Prepared:
    """Load the data set and backbone, and fetch (or compute) the cached image features.

    ``loaded`` passes a ``(dataset, world)`` pair that is already in memory instead of reading the config's.
    """
    device = device or resolve_device(cfg.run.device)
    dataset, world = loaded if loaded is not None else load_dataset(cfg)
    backbone = backbone_from_config(cfg, world)
    common = dict(preprocess=PreprocessConfig(mode=cfg.data.preprocess),
                  cache_dir=cfg.data.feature_cache_dir or cfg.data.cache_dir, device=device,
                  batch_size=cfg.data.feature_batch_size, chunk_size=cfg.data.feature_chunk_size,
                  num_workers=cfg.data.num_workers, precision=cfg.run.precision, progress=cfg.run.progress)
    features: dict[str, Optional[torch.Tensor]] = {
        "train": extract_features(backbone, dataset.train, flips=True, **common),
        "val": extract_features(backbone, dataset.val, **common) if dataset.val is not None else None,
        "test": extract_features(backbone, dataset.test, **common),
    }
    backbone.model.to("cpu")
    return Prepared(dataset=dataset, backbone=backbone, features=features, world=world)


def class_name_captions(split: MultiLabelSplit, class_names: list[str]) -> list[str]:
    """Captions built from the labels: 'a photo of a dog, a cat and a sofa.'"""
    out = []
    for row in split.labels:
        names = [f"a {class_names[c]}" for c in row.nonzero()[0]]
        text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1] if names else "a photo"
        out.append(f"a photo of {text}.")
    return out


def train_captions(cfg: Config, prepared: Prepared) -> Optional[list[str]]:
    """The captions the CSE loss uses, or None when it is off (see ``data.captions``)."""
    split = prepared.dataset.train
    mode = cfg.data.captions
    if mode == "off":
        return None
    if mode == "class-names":
        return class_name_captions(split, prepared.class_names)
    if split.captions is None or not any(c.strip() for c in split.captions):
        return None
    return split.captions


def caption_embeddings(cfg: Config, prepared: Prepared, length: Optional[int] = None) -> Optional[CaptionEmbeddings]:
    captions = train_captions(cfg, prepared)
    if captions is None:
        return None
    model = prepared.backbone.model
    return embed_captions(captions, model.token_embedding, prepared.backbone.tokenizer, length=length,
                          max_chars=cfg.data.caption_chars)
