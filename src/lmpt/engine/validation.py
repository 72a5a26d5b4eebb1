"""Checking a config where it is read: every choice against its registry, every number against its range,
the nested ``loss.db`` / ``loss.asl`` mappings key by key (with did-you-mean), and a resumed run's settings
against the ones it was started with. Every problem is one :class:`~lmpt.errors.ConfigError` line that names
the key and the value.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

from ..batchnorm import BATCHNORM_MODES
from ..calibration import CALIBRATIONS
from ..data.benchmarks import CLASS_NAME_STYLES
from ..data.decode import DECODE_CHOICES
from ..data.images import PREPROCESSING
from ..data.sources import DATA_SOURCES, check_source_settings
from ..errors import ConfigError
from ..losses import ASL_PARAMS, CLASSIFICATION_LOSSES, CSE_DISTANCES, CSE_FORMS, DB_FOCAL_MODES, DB_PARAMS, DB_PRESETS
from ..metrics import PROTOCOLS
from ..precision import PRECISIONS
from ..registry import Registry
from ..zeroshot import TEMPLATE_MODES
from .methods import METHODS

# The configs checked here are lmpt.engine.config.Config objects; that module imports this one (it validates
# what it loads), so this one does not import it back, not even for annotations.

SELECTIONS = ("last", "val", "test")
CAPTION_MODES = ("auto", "class-names", "off")
CUDA_GRAPH_MODES = ("auto", "on", "off")
ZEROSHOT_PROTOCOLS = ("matched", "reference")
PROBE_INITS = ("random", "zeroshot")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("plateau", "cosine", "constant")
PLATEAU_METRICS = ("auto", "val", "train", "test")
PROBE_INPUTS = ("scaled", "raw")

# Keys a resumed run may change: where things are and how fast they run, never what is computed.
RESUMABLE = {
    "data": {"root", "image_root", "cache_dir", "feature_cache_dir", "num_workers", "feature_batch_size",
             "feature_chunk_size", "train", "val", "test", "classes"},
    "model": {"pretrained"},
    "run": {"device", "progress", "cuda_graphs", "output_dir", "name", "checkpoint_every"},
}


def _choice(value: Any, options: Iterable[str], where: str) -> None:
    options = tuple(options)
    if value not in options:
        reg = Registry(where)
        for o in options:
            reg.register(o, o)
        raise ConfigError(f"{where}={value!r} is not one of {', '.join(options)}.{reg.suggest(str(value))}")


def _number(value: Any, where: str, low: Optional[float] = None, high: Optional[float] = None,
            low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        rng = " and ".join(x for x in (lo, hi) if x)
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}={value!r}: must be {kind}" + (f" {rng}" if rng else ""))


def _mapping(values: dict, allowed: tuple[str, ...], where: str, kind: str) -> None:
    reg = Registry(f"{where} key")
    for k in allowed:
        reg.register(k, k)
    for key, value in values.items():
        if key not in reg:
            raise ConfigError(f"{where}: unknown {kind} parameter '{key}'.{reg.suggest(str(key))} "
                              f"Known: {', '.join(allowed)}.")
        if key == "reduction":
            _choice(value, ("mean", "sum"), f"{where}.reduction")
        elif key == "focal":
            _choice(value, DB_FOCAL_MODES, f"{where}.focal")
        elif key == "focal_grad":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.focal_grad={value!r}: must be true or false")
        else:
            _number(value, f"{where}.{key}")


def validate(cfg: Any, check_source: bool = True) -> None:
    """Raise ConfigError (one line naming key and value) for the first invalid setting.

    ``check_source=False`` leaves out the settings the data source requires (its root or manifests), for a
    config whose data paths are filled in later (the generated world's).
    """
    m, d, lo, o, p, r = cfg.model, cfg.data, cfg.loss, cfg.optim, cfg.probe, cfg.run

    _choice(r.method, METHODS, "run.method")
    _choice(r.select, SELECTIONS, "run.select")
    _choice(r.protocol, PROTOCOLS, "run.protocol")
    _choice(r.precision, PRECISIONS, "run.precision")
    _choice(r.templates, TEMPLATE_MODES, "run.templates")
    _choice(r.zeroshot_protocol, ZEROSHOT_PROTOCOLS, "run.zeroshot_protocol")
    _choice(r.calibration, tuple(CALIBRATIONS), "run.calibration")
    _number(r.calibration_min_positives, "run.calibration_min_positives", 1)
    _number(r.threshold_beta, "run.threshold_beta", 0, low_open=True)
    _choice(r.cuda_graphs, CUDA_GRAPH_MODES, "run.cuda_graphs")
    device = str(r.device)
    if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"run.device={r.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if r.name is not None:
        name = str(r.name)
        if not name.strip() or name.strip(".") == "" or any(c in name for c in ("/", "\\", "\0")):
            raise ConfigError(f"run.name={r.name!r}: a run name is one folder name under run.output_dir (no '/', "
                              "not '.' or '..'); put the parent folder in --out / run.output_dir")
    if not str(r.output_dir).strip():
        raise ConfigError("run.output_dir is empty: give the folder runs are written under (e.g. runs)")
    _number(r.seed, "run.seed", 0, 2 ** 63 - 1, integer=True)
    _number(r.checkpoint_every, "run.checkpoint_every", 1, integer=True)

    _choice(d.dataset, DATA_SOURCES, "data.dataset")
    _choice(d.preprocess, PREPROCESSING, "data.preprocess")
    _choice(d.decode, DECODE_CHOICES, "data.decode")
    _choice(d.captions, CAPTION_MODES, "data.captions")
    _choice(d.class_names, CLASS_NAME_STYLES, "data.class_names")
    _number(d.val_fraction, "data.val_fraction", 0, 1, high_open=True)
    _number(d.split_seed, "data.split_seed", 0, 2 ** 63 - 1, integer=True)
    _number(d.caption_chars, "data.caption_chars", 1, integer=True)
    _number(d.feature_batch_size, "data.feature_batch_size", 1, integer=True)
    _number(d.feature_chunk_size, "data.feature_chunk_size", 1, integer=True)
    if d.num_workers is not None:
        _number(d.num_workers, "data.num_workers", 0, 256, integer=True)

    if m.quick_gelu not in ("auto", True, False):
        raise ConfigError(f"model.quick_gelu={m.quick_gelu!r} is not one of auto, true, false")
    if not str(m.backbone).strip():
        raise ConfigError("model.backbone is empty: name an open_clip architecture (e.g. RN50, ViT-B-16)")
    _number(m.n_ctx, "model.n_ctx", 1, 64, integer=True)
    _number(m.init_std, "model.init_std", 0, low_open=True)
    _choice(m.batchnorm, BATCHNORM_MODES, "model.batchnorm")

    _choice(lo.classification, CLASSIFICATION_LOSSES, "loss.classification")
    _number(lo.lam, "loss.lam", 0, 1)
    if lo.db_preset is not None:
        _choice(lo.db_preset, DB_PRESETS, "loss.db_preset")
    _choice(lo.db_focal, DB_FOCAL_MODES, "loss.db_focal")
    _mapping(lo.db, DB_PARAMS, "loss.db", "DB-loss")
    if "neg_scale" in lo.db:
        _number(lo.db["neg_scale"], "loss.db.neg_scale", 0, low_open=True)
    _mapping(lo.asl, ASL_PARAMS, "loss.asl", "asymmetric-loss")
    classification = METHODS[r.method].classification or lo.classification
    _mapping(lo.params, CLASSIFICATION_LOSSES[classification].params, "loss.params", f"'{classification}' loss")
    _choice(lo.cse_form, CSE_FORMS, "loss.cse_form")
    _choice(lo.cse_distance, CSE_DISTANCES, "loss.cse_distance")
    _number(lo.cse_margin, "loss.cse_margin", 0)
    _number(lo.cse_gamma, "loss.cse_gamma")
    _number(lo.cse_shift, "loss.cse_shift", 0, integer=True)
    _number(lo.focal_gamma, "loss.focal_gamma", 0)

    _choice(o.name, OPTIMIZERS, "optim.name")
    _choice(o.schedule, SCHEDULES, "optim.schedule")
    _choice(o.plateau_on, PLATEAU_METRICS, "optim.plateau_on")
    if o.plateau_on == "test" and r.select != "test":
        raise ConfigError("optim.plateau_on=test steps the schedule on test mAP, as the reference does: it is allowed "
                          "only under the oracle protocol (--select-on test, run.select=test), which labels every "
                          "output 'test-selected (oracle)'")
    _number(o.lr, "optim.lr", 0, low_open=True)
    _number(o.momentum, "optim.momentum", 0, 1, high_open=True)
    _number(o.weight_decay, "optim.weight_decay", 0)
    _number(o.batch_size, "optim.batch_size", 1, integer=True)
    _number(o.epochs, "optim.epochs", 1, 100_000, integer=True)
    _number(o.patience, "optim.patience", 0, integer=True)
    _number(o.factor, "optim.factor", 0, 1, low_open=True, high_open=True)
    _number(o.min_lr, "optim.min_lr", 0)

    _choice(p.optimizer, OPTIMIZERS, "probe.optimizer")
    _choice(p.init, PROBE_INITS, "probe.init")
    _choice(p.input, PROBE_INPUTS, "probe.input")
    _number(p.lr, "probe.lr", 0, low_open=True)
    _number(p.weight_decay, "probe.weight_decay", 0)

    if check_source:
        check_source_settings(d.dataset, {k: getattr(d, k) for k in ("root", "train", "val", "test")})
    if r.select == "val" and d.val_fraction == 0 and not d.val:
        raise ConfigError("run.select=val needs a validation split: set data.val_fraction > 0 or data.val=FILE")


def check_resume(saved: Any, requested: Any, run_dir: str) -> None:
    """Refuse to resume a run with settings that change what it computes (paths and speed may change)."""
    a, b = saved.to_dict(), requested.to_dict()
    for section in ("run", "model", "data", "optim", "probe", "loss"):  # the loss section follows run.method
        for key, old in a[section].items():
            new = b[section][key]
            if old != new and key not in RESUMABLE.get(section, set()):
                raise ConfigError(f"cannot resume {run_dir} with {section}.{key}={new!r}: the run was started with "
                                  f"{section}.{key}={old!r}. Resume with its own settings (drop the override), or "
                                  "start a new run (another run.name).")
