"""Run configuration: dataclasses, YAML files, ``section.key=value`` overrides.

A config has six sections (``model``, ``data``, ``loss``, ``optim``, ``probe``, ``run``). YAML files may set
any subset; the rest keep the defaults below, which are the LMPT reference's hyperparameters. Built-in configs
ship inside the package (``lmpt/configs/*.yaml``) and can be named without a path, e.g.
``lmpt train voc-lt-rn50``. Values are checked by :func:`lmpt.engine.validation.validate` when a config is
loaded.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml

from ..errors import ConfigError
from ..registry import Registry
from .settle import settle
from .validation import validate


@dataclass
class ModelConfig:
    """Backbone and prompts."""

    backbone: str = "RN50"  # any open_clip architecture (a model config JSON beside the weights file works too)
    pretrained: Optional[str] = None  # weights file (or tag, offline only if cached); None = random init
    quick_gelu: Any = "auto"  # auto (QuickGELU exactly for OpenAI's weights) | true | false
    n_ctx: int = 16
    class_specific: bool = True
    ctx_init: Optional[str] = None
    init_std: float = 0.02
    batchnorm: str = "frozen"  # frozen | adapt | train (the reference's drifting statistics); lmpt.batchnorm


@dataclass
class DataConfig:
    """Where the images, labels and captions come from, and how they are preprocessed."""

    dataset: str = "voc-lt"  # voc-lt | coco-lt | manifest (lmpt.data.sources.DATA_SOURCES)
    root: Optional[str] = None  # folder holding VOCdevkit/ (VOC-LT) or train2017/, val2017/ (COCO-LT)
    train: Optional[str] = None  # manifests (dataset=manifest)
    val: Optional[str] = None
    test: Optional[str] = None
    classes: Optional[str] = None
    image_root: Optional[str] = None
    class_names: str = "readable"  # readable | raw (the reference's prompts) | first-word (its zero-shot script)
    val_fraction: float = 0.1  # carved from train when there is no val manifest; 0 = no validation split
    split_seed: int = 0
    preprocess: str = "reference"  # reference | clip (lmpt.data.images.PREPROCESSING)
    decode: str = "auto"  # auto (GPU when extracting on CUDA) | cpu (PIL in workers) | gpu (lmpt.data.decode)
    captions: str = "auto"  # auto (use captions, CSE off without them) | class-names | off
    caption_chars: int = 75
    cache_dir: Optional[str] = None  # default: $LMPT_CACHE_DIR or ~/.cache/lmpt (generated world, features)
    feature_cache_dir: Optional[str] = None  # image-feature cache only (default: cache_dir)
    num_workers: Optional[int] = None
    feature_batch_size: int = 128
    feature_chunk_size: int = 1024  # images per cache chunk: the unit of resuming and of torchrun sharding


@dataclass
class LossConfig:
    """Classification loss, class-specific embedding (CSE) loss and their mix."""

    classification: str = "db"  # db | bce | focal | asl (set by run.method unless method is "custom")
    cse: bool = True
    lam: float = 0.5  # loss = lam * L_cls + (1 - lam) * L_cse
    db_preset: Optional[str] = None  # voc-lt | coco-lt; default: the data set's name when it has one
    db_focal: str = "batch"  # batch (LMPT reference) | elementwise (original DB paper)
    db: dict = field(default_factory=dict)  # overrides: alpha, beta, mu, kappa, neg_scale, gamma, balance
    cse_form: str = "reference"  # reference | hinge (chosen on the world's validation split, docs/method.md)
    cse_distance: str = "sum"  # sum | mean
    cse_margin: float = 0.2
    cse_gamma: float = 2.0
    cse_shift: int = 2
    asl: dict = field(default_factory=dict)  # gamma_neg, gamma_pos, clip, eps, reduction, focal_grad
    focal_gamma: float = 2.0
    params: dict = field(default_factory=dict)  # keyword arguments of the classification loss (any registered loss)


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (the reference: SGD, lr 5e-4, momentum 0.9, wd 1e-4, batch 64, 50 epochs)."""

    name: str = "sgd"  # sgd (reference) | adam | adamw (momentum is then Adam's beta1)
    lr: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    epochs: int = 50
    schedule: str = "plateau"  # plateau (validation mAP, or the training loss without a val split) | cosine | constant
    plateau_on: str = "auto"  # auto (val mAP, else training loss) | val | train | test (the reference; oracle only)
    patience: int = 5
    factor: float = 0.1
    min_lr: float = 1e-7

    @property
    def optimizer_name(self) -> str:
        return self.name


@dataclass
class ProbeConfig:
    """The ``linear-probe`` method: ``Linear(D, C)`` on cached image features (the reference's finetune_clip/fc.py)."""

    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    init: str = "random"  # random | zeroshot (the zero-shot classifier: starts at zero-shot CLIP's scores)
    input: str = "scaled"  # scaled (logit scale x the normalised feature) | raw (the reference's raw feature)

    @property
    def optimizer_name(self) -> str:
        return self.optimizer


@dataclass
class RunConfig:
    """What to run and where to write it."""

    method: str = "lmpt"  # zeroshot | linear-probe | coop | coop-db | lmpt | lmpt-asl | custom
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16 | fp16 (with loss scaling)
    select: str = "last"  # last | val | test (test = oracle selection, labelled as such)
    protocol: str = "softmax"  # the headline scoring protocol: softmax (reference) | sigmoid
    output_dir: str = "runs"
    name: Optional[str] = None
    templates: str = "ensemble"  # zero-shot prompts: ensemble | reference | simple
    zeroshot_protocol: str = "matched"  # matched (the runs' own features) | reference (the reference's script)
    cuda_graphs: str = "auto"  # auto | on | off: replay the training step as a CUDA graph on GPUs
    progress: bool = True
    checkpoint_every: int = 1  # epochs between resumable training-state checkpoints
    calibration: str = "platt"  # probabilities and thresholds fitted on val: platt | temperature-bias | global
    calibration_min_positives: int = 5  # fewer held-out positives: the class gets the shared map and threshold
    threshold_beta: float = 0.5  # thresholds maximise F-beta on val: 0.5 (chosen on val: F1 within 1 point of
    # beta 1's, 1.2x instead of 1.6x the true labels per image; bench/calibration.py), 1 = F1, > 1 favours recall


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def copy(self) -> "Config":
        return copy.deepcopy(self)


_SECTION_CLASSES = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]
SECTIONS: Registry = Registry("config section")
for _name, _cls in _SECTION_CLASSES.items():
    SECTIONS.register(_name, _cls)


def section_fields(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(SECTIONS[section])}


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Convert ``value`` to the type of the field's default, with a clear error."""
    if value is None or default is None or isinstance(default, (dict, list)) and isinstance(value, type(default)):
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, str) and _looks_like_float(value.strip()):
            return float(value)  # YAML 1.1 reads 5e-4 (no dot) as a string; the command line reads it as a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        if isinstance(value, bool):
            return value  # e.g. quick_gelu: true
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a single value, got {value!r}")
        return str(value)
    if isinstance(default, dict) and not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping like {{key: value}}, got {value!r}")
    return value


def _auto_or_bool(value: Any) -> Any:
    """``"auto"`` stays; ``true``/``false`` in any spelling become booleans (anything else is left for validation)."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return text in ("true", "yes", "on", "1")
    return value


# Keys whose values are normalised where they are read (validation only checks, it never rewrites).
_NORMALIZE = {("model", "quick_gelu"): _auto_or_bool}


def apply_dict(cfg: Config, data: dict, source: str = "config") -> Config:
    """Set the values of a nested ``{section: {key: value}}`` mapping on ``cfg`` (in place)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section '{section}'.{SECTIONS.suggest(str(section))} "
                              f"Sections: {', '.join(SECTIONS)}.")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys to values")
        known = section_fields(section)
        target = getattr(cfg, section)
        for key, value in values.items():
            if key not in known:
                keys = Registry(f"key of '{section}'")
                for k in known:
                    keys.register(k, k)
                raise ConfigError(f"{source}: unknown key '{section}.{key}'.{keys.suggest(str(key))} "
                                  f"Keys of '{section}': {', '.join(known)}.")
            fdef = known[key]
            default = _default_of(fdef)
            if value is None and not str(fdef.type).startswith("Optional"):
                raise ConfigError(f"{source}: {section}.{key} is empty; give it a value (the default is {default!r})")
            if default is None:  # an optional key: its declared type decides
                default = _OPTIONAL_TYPES.get(str(fdef.type))
                if isinstance(default, str) and isinstance(value, bool):
                    raise ConfigError(f"{source}: {section}.{key} must be a name or a path, got {value!r}")
            value = _coerce(value, default, f"{source}: {section}.{key}")
            normalize = _NORMALIZE.get((section, key))
            setattr(target, key, normalize(value) if normalize is not None else value)
    return cfg


_OPTIONAL_TYPES = {"Optional[str]": "", "Optional[int]": 0, "Optional[float]": 0.0}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def _default_of(fdef: dataclasses.Field) -> Any:
    if fdef.default is not dataclasses.MISSING:
        return fdef.default
    return fdef.default_factory() if fdef.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]


def builtin_config_names() -> list[str]:
    folder = resources.files("lmpt") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(path: Union[str, Path]) -> tuple[dict, str]:
    p = Path(path)
    if not p.is_file():
        name = str(path)[:-5] if str(path).endswith(".yaml") else str(path)
        builtin = resources.files("lmpt") / "configs" / f"{Path(name).name}.yaml"
        if "/" not in str(path) and builtin.is_file():
            return _load_yaml(builtin.read_text()) or {}, f"built-in config '{Path(name).name}'"
        raise ConfigError(f"config file not found: {path}. Pass a YAML file or a built-in config name "
                          f"({', '.join(builtin_config_names())}).")
    try:
        data = _load_yaml(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a UTF-8 text file (byte {exc.start}: {exc.reason}); save it as UTF-8 YAML") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must be a mapping of sections, got {type(data).__name__}")
    return data, str(p)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim", "lr", 0.001)`` (values parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. optim.lr=1e-3)")
    dotted, raw = text.split("=", 1)
    if "." not in dotted:
        raise ConfigError(f"override '{text}': the key needs its section, e.g. optim.{dotted}=... "
                          f"(sections: {', '.join(SECTIONS)})")
    section, key = dotted.strip().split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({str(exc).splitlines()[0]}); "
                          "quote it, e.g. 'loss.db={kappa: 20}'") from None
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)
    return section, key, value


def _is_text_field(section: str, key: str) -> bool:
    if section not in SECTIONS:
        return False
    f = section_fields(section).get(key)
    return f is not None and str(f.type) in ("str", "Optional[str]")


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Apply ``section.key=value`` overrides to ``cfg`` (in place); ``section.key.sub=value`` sets one entry of a
    mapping-valued key (``loss.db.kappa=0.05``)."""
    for text in overrides:
        section, key, value = parse_override(text)
        head, _, sub = key.partition(".")
        if sub and section in SECTIONS and isinstance(getattr(getattr(cfg, section), head, None), dict):
            key, value = head, {**getattr(getattr(cfg, section), head), sub: value}  # loss.db.kappa=0.05
        if _is_text_field(section, key) and value is not None and not isinstance(value, str):
            value = text.split("=", 1)[1].strip()  # keep names and paths verbatim ("nan", "1e3", "007")
        apply_dict(cfg, {section: {key: value}}, f"override '{text}'")
    return cfg


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (),
                check_source: bool = True) -> Config:
    """Defaults, then the YAML file (``base:`` chains allowed), then ``section.key=value`` overrides; validated
    (``check_source=False``: all but the data source's required paths, see :func:`validate`)."""
    cfg = Config()
    chain: list[tuple[dict, str]] = []
    if path is not None:
        current: Optional[Union[str, Path]] = path
        seen = set()
        while current is not None:
            data, source = _read_yaml(current)
            if source in seen:
                raise ConfigError(f"{source}: 'base:' chain loops")
            seen.add(source)
            base = data.pop("base", None)
            if base is not None and (not isinstance(base, str) or not base.strip()):
                raise ConfigError(f"{source}: 'base:' must name one config (a YAML file or a built-in name), got "
                                  f"{base!r}; to combine several, chain them (each file names its own base)")
            chain.append((data, source))
            if base is not None and Path(str(current)).is_file() and not Path(base).is_absolute():
                candidate = Path(str(current)).parent / base
                base = candidate if candidate.is_file() else base
            current = base
        for data, source in reversed(chain):
            apply_dict(cfg, data, source)
    apply_overrides(cfg, overrides)
    explicit_n_ctx = any(isinstance(data.get("model"), dict) and "n_ctx" in data["model"] for data, _ in chain) \
        or any(o.split("=", 1)[0].strip() == "model.n_ctx" for o in overrides)
    validate(cfg, check_source)
    settle(cfg, explicit_n_ctx)
    return cfg


def config_from_dict(data: dict, overrides: Sequence[str] = ()) -> Config:
    """Rebuild a config saved with a run (``Config.to_dict``), then apply ``overrides``; validated."""
    cfg = apply_dict(Config(), copy.deepcopy(data), "saved config")
    apply_overrides(cfg, overrides)
    validate(cfg)
    settle(cfg, explicit_n_ctx=False)
    return cfg
