"""The Python entry points ``lmpt.train`` and ``lmpt.load_classifier`` (notebooks: train and predict without the
CLI). ``lmpt.load_classifier`` takes a run folder as well as a file from ``lmpt export``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from ...errors import ConfigError
from ..config import Config, config_from_dict, load_config
from ..rundir.outputs import RunResult


@dataclass
class TrainedRun(RunResult):
    """A finished run: its folder, metrics (``metrics.json``'s content) and per-epoch history."""

    def classifier(self, device: Any = "cpu"):
        """The run's classifier, ready to ``predict`` (a :class:`~lmpt.engine.use.inference.RunScorer`)."""
        return load_classifier(self.run_dir, device)


def train(config: Union[None, str, Path, Config, Mapping[str, Any]] = None, overrides: Sequence[str] = (),
          run_dir: Optional[Union[str, Path]] = None) -> TrainedRun:
    """Train (or, for ``run.method=zeroshot``, evaluate) one run: ``config`` is a YAML file, a config dict
    (``{"data": {...}, "run": {...}}``), a :class:`~lmpt.engine.config.Config` or None (the defaults);
    ``overrides`` are ``section.key=value`` strings, as on the command line."""
    from ..train.run import run

    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of section.key=value strings, got the string {overrides!r}")
    if isinstance(config, Config):
        cfg = config_from_dict(config.to_dict(), overrides) if overrides else config
    elif isinstance(config, Mapping):
        cfg = config_from_dict(dict(config), overrides)
    else:
        cfg = load_config(config, overrides)
    result = run(cfg, run_dir=run_dir)
    return TrainedRun(result.run_dir, result.metrics, result.history)


def load_classifier(path: Union[str, Path], device: Any = "cpu", weights: Optional[str] = None):
    """A classifier with ``predict``: a run folder (or its .safetensors file) -> its RunScorer; a file from
    ``lmpt export`` (.onnx, .pt) -> :func:`lmpt.deploy.load_classifier`."""
    from ...deploy import load_classifier as load_exported

    p = Path(path)
    if p.is_dir() or p.suffix == ".safetensors":
        from ..prepared import resolve_device
        from .inference import RunScorer, load_run

        return RunScorer(load_run(p, weights=weights, device=resolve_device(str(device))))
    return load_exported(p, device)


__all__ = ["TrainedRun", "train", "load_classifier"]
