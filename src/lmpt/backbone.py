"""Frozen CLIP backbones: any open_clip architecture, weights from a local file.

``create_clip("RN50", "RN50.pt")`` loads OpenAI's TorchScript archive, detects that the weights are
OpenAI's and builds the architecture with QuickGELU, so the features are right. State dicts
(``.pt``/``.bin``), ``.safetensors`` files and open_clip training checkpoints
(``{"state_dict": {"module.…": …}}``) load the same way. A pretrained *tag* (``openai``) is taken from the
local Hugging Face cache or downloaded there (safetensors first, checksum verified: :mod:`lmpt.weights`); an
offline machine (``HF_HUB_OFFLINE=1``, no network) fails at once with one line naming the file to get.
"""
from __future__ import annotations

import difflib
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from .data.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .errors import ConfigError, UserError
from .weights_file import OPENAI_MARKER_KEYS, LoadedWeights, load_weights_file  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

_OPENAI_ALIASES = {"ViT-B/16": "ViT-B-16", "ViT-B/32": "ViT-B-32", "ViT-L/14": "ViT-L-14",
                   "ViT-L/14@336px": "ViT-L-14-336", "ViT16": "ViT-B-16", "ViT32": "ViT-B-32"}
_REGISTERED: set[str] = set()
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass
class CLIPBackbone:
    """A frozen CLIP model with everything needed to use and to identify it.

    Attributes:
        model: the open_clip ``CLIP`` module, frozen and in eval mode.
        model_name: the open_clip architecture name that was built (e.g. ``RN50-quickgelu``).
        pretrained: the weights file or tag, or None for random init.
        fingerprint: a hash of the loaded weights and architecture; changes when either changes.
        quick_gelu: whether the architecture uses QuickGELU.
        image_size: input resolution of the image tower.
        mean, std: the image normalisation the weights were trained with.
        tokenizer: callable ``list[str] -> LongTensor[N, context_length]``.
        weights_fingerprint: the fingerprint of the weights as loaded; ``fingerprint`` changes from it when
            the BatchNorm statistics are re-estimated (``model.batchnorm=adapt``, :meth:`refresh_fingerprint`).
    """

    model: nn.Module
    model_name: str
    pretrained: Optional[str]
    fingerprint: str
    quick_gelu: bool
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tokenizer: Callable[..., torch.Tensor] = field(repr=False)
    weights_fingerprint: Optional[str] = None

    def __post_init__(self) -> None:
        if self.weights_fingerprint is None:
            self.weights_fingerprint = self.fingerprint

    def refresh_fingerprint(self) -> str:
        """Recompute :attr:`fingerprint` from the model's current tensors (after its BatchNorm statistics changed)."""
        self.fingerprint = state_dict_fingerprint(self.model, f"{self.model_name}|quick_gelu={self.quick_gelu}")
        return self.fingerprint

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @property
    def text_width(self) -> int:
        return int(self.model.token_embedding.weight.shape[1])

    @property
    def embed_dim(self) -> int:
        proj = self.model.text_projection
        return int(proj.weight.shape[0] if isinstance(proj, nn.Linear) else proj.shape[1])

    @property
    def logit_scale(self) -> float:
        """CLIP's logit scale, ``exp(model.logit_scale)``: the factor on cosine similarities (100 for OpenAI's)."""
        return float(self.model.logit_scale.detach().exp())

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable identity, stored with runs, checkpoints and caches."""
        return {"model": self.model_name, "pretrained": self.pretrained, "fingerprint": self.fingerprint,
                "weights_fingerprint": self.weights_fingerprint, "quick_gelu": self.quick_gelu, "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std)}


def normalize_model_name(name: str) -> str:
    """Accept OpenAI's spellings (``ViT-B/16``) and the reference's (``ViT16``)."""
    return _OPENAI_ALIASES.get(name, name)


def register_model_configs(*folders: Union[str, Path]) -> None:
    """Make the open_clip model configs (JSON) in ``folders`` and ``$LMPT_MODEL_CONFIGS`` buildable by name.

    open_clip's model-config pattern: a JSON file with ``embed_dim``, ``vision_cfg`` and ``text_cfg``
    names an architecture after its file stem. Idempotent; missing folders are skipped; other JSON files
    in a folder are ignored.
    """
    import open_clip

    env = [f for f in os.environ.get("LMPT_MODEL_CONFIGS", "").split(os.pathsep) if f]
    for folder in [*env, *folders]:
        key = str(Path(folder).expanduser().resolve())
        if key not in _REGISTERED and Path(key).exists():
            open_clip.add_model_config(key)
            _REGISTERED.add(key)


def _known_models() -> list[str]:
    import open_clip

    register_model_configs()
    return open_clip.list_models()


def check_model_name(name: str) -> str:
    """Return the normalised architecture name, or raise ConfigError with close matches."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model.backbone is empty ({name!r}): name an open_clip architecture (e.g. RN50, ViT-B-16)")
    name = normalize_model_name(name)
    known = _known_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown backbone '{name}'.{hint} Any open_clip architecture works "
                          f"(e.g. RN50, ViT-B-16, ViT-L-14); `python -c \"import open_clip; "
                          f"print(open_clip.list_models())\"` lists them.")
    return name


def _looks_like_path(pretrained: str) -> bool:
    return (os.sep in pretrained or "/" in pretrained or pretrained.endswith(_WEIGHT_SUFFIXES)
            or Path(pretrained).expanduser().exists())


def _resolve_tag(model_name: str, tag: str, allow_download: bool) -> str:
    """Return the local file of a pretrained tag: cached, else downloaded (:func:`lmpt.weights.fetch_weights`)."""
    from .weights import fetch_weights

    return str(fetch_weights(model_name, tag, download=allow_download))


def state_dict_fingerprint(model: nn.Module, model_name: str) -> str:
    """Hash of architecture name and every tensor of the state dict (names, shapes, bytes)."""
    h = hashlib.sha256(model_name.encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()[:20]


def _fix_logit_scale(sd: dict[str, torch.Tensor], model: nn.Module) -> None:
    for key in ("logit_scale", "logit_bias"):
        param = getattr(model, key, None)
        if key in sd and param is not None and sd[key].shape != param.shape:
            sd[key] = sd[key].reshape(param.shape)


def create_clip(
    model_name: str,
    pretrained: Optional[str] = None,
    quick_gelu: Union[str, bool] = "auto",
    device: Union[str, torch.device] = "cpu",
    allow_download: bool = True,
    seed: int = 0,
) -> CLIPBackbone:
    """Build a frozen open_clip CLIP and load its weights.

    Args:
        model_name: open_clip architecture (``RN50``, ``ViT-B-16``, ``ViT-L-14``, …; ``ViT-B/16`` accepted).
        pretrained: a weights file path, a pretrained tag, or None for random weights (seeded by ``seed``).
            A model config JSON beside a weights file (``<architecture>.json``) is registered first, so
            custom architectures travel with their weights.
        quick_gelu: ``"auto"`` (QuickGELU exactly when the weights are OpenAI's or the name says so),
            or True/False to force it.
        device: where to put the model.
        allow_download: let a pretrained tag download when it is not cached (False: the cache only).
    """
    import open_clip

    if pretrained and _looks_like_path(str(pretrained)):
        register_model_configs(Path(str(pretrained)).expanduser().parent)  # a model config may sit beside it
    name = check_model_name(model_name)
    weights: Optional[LoadedWeights] = None
    is_tag = False
    if pretrained:
        pretrained = str(pretrained)
        if _looks_like_path(pretrained):
            weights = load_weights_file(pretrained)
        else:
            is_tag = True
            weights = load_weights_file(_resolve_tag(name, pretrained, allow_download))
            weights.openai = weights.openai or pretrained == "openai"

    if quick_gelu == "auto":
        use_qg = name.endswith("-quickgelu") or bool(weights and weights.openai) or (is_tag and pretrained == "openai")
    else:
        use_qg = bool(quick_gelu) or name.endswith("-quickgelu")
        if weights is not None and weights.openai and not use_qg:
            warnings.warn(f"{weights.source} looks like OpenAI weights, which need QuickGELU; "
                          "quick_gelu=False will give wrong features.", stacklevel=2)
    arch = name
    if use_qg and not name.endswith("-quickgelu") and f"{name}-quickgelu" in open_clip.list_models():
        arch = f"{name}-quickgelu"

    torch.manual_seed(seed)
    with quiet_open_clip():
        model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=use_qg)
    if weights is not None:
        sd = {k: v.float() if v.is_floating_point() else v for k, v in weights.state_dict.items()}
        _fix_logit_scale(sd, model)
        persistent = set(model.state_dict())
        for key in [k for k, _ in model.named_buffers() if k not in persistent]:
            sd.pop(key, None)  # non-persistent buffers (the causal mask) that TorchScript archives carry
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            missing = sorted(set(model.state_dict()) - set(sd))[:5]
            unexpected = sorted(set(sd) - set(model.state_dict()))[:5]
            raise UserError(f"the weights in {weights.source} do not fit architecture '{arch}' "
                            f"(missing keys {missing}, unexpected keys {unexpected}, or shape mismatch: "
                            f"{str(exc).splitlines()[-1].strip()[:300]}). Check that model= names the architecture "
                            "the weights were trained with (e.g. RN50 for RN50.pt, ViT-B-16 for ViT-B-16.pt).") from None
    if not hasattr(model, "token_embedding") or getattr(model, "text_pool_type", "argmax") != "argmax":
        raise ConfigError(f"backbone '{arch}' has no CLIP-style causal text transformer with EOT pooling; "
                          "prompt tuning here needs one (RN*, ViT-* CLIP models work; SigLIP, CoCa and "
                          "HF-text models do not).")
    model = model.float().eval().requires_grad_(False).to(device)
    pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    image_size = model.visual.image_size
    image_size = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
    mean = tuple(float(x) for x in pcfg.get("mean", OPENAI_CLIP_MEAN))
    std = tuple(float(x) for x in pcfg.get("std", OPENAI_CLIP_STD))
    source = weights.source if weights is not None else (pretrained or None)
    fingerprint = state_dict_fingerprint(model, f"{arch}|quick_gelu={use_qg}")
    logger.info("backbone %s (quick_gelu=%s) weights=%s fingerprint=%s", arch, use_qg, source or "random", fingerprint)
    return CLIPBackbone(model=model, model_name=arch, pretrained=source, fingerprint=fingerprint,
                        quick_gelu=use_qg, image_size=image_size, mean=mean, std=std,  # type: ignore[arg-type]
                        tokenizer=build_tokenizer(arch, int(model.context_length)))


def build_tokenizer(model_name: str, context_length: int) -> Callable[..., torch.Tensor]:
    """CLIP's BPE tokenizer (shipped inside open_clip, no download) at the model's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer(context_length=context_length)

    def tokenize(texts: Union[str, list[str]]) -> torch.Tensor:
        return tok(texts, context_length=context_length)

    return tokenize


class quiet_open_clip:
    """Silence open_clip's 'No pretrained weights loaded' warning for deliberate random init."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger()
        self._filter = _DropMessage("No pretrained weights loaded")
        self._logger.addFilter(self._filter)

    def __exit__(self, *exc: object) -> None:
        self._logger.removeFilter(self._filter)


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()
