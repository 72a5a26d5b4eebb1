"""Every file name a run, a sweep or the demo writes or reads, in one place.

A run folder (:class:`RunLayout`)::

    config.yaml      the settings, written first (a killed run resumes from them)
    state.pt         the resumable training state, after every epoch
    train.log        the run's log
    history.csv      one row per epoch; tensorboard/ the same as TensorBoard scalars
    <kind>.safetensors  the classifier (prompt, probe or zeroshot: lmpt.engine.methods.METHOD_KINDS)
    metrics.json     every number; per_class.csv per-class AP; report.md with its plots
    test_logits.npy  test logits for paired comparisons (test_rows.npy: the rows, when a subset was scored)
    eval.json        what `lmpt eval` recomputed
    .lmpt-run.lock   held while a process writes the folder (a second run of the same folder refuses)

A sweep or demo folder (:class:`SweepLayout`) holds one run folder per method and seed and the summary.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ..methods import MethodKind, weights_files


class _Folder:
    """A folder whose files have fixed names: ``layout / NAME`` is their path."""

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.root / name


class RunLayout(_Folder):
    """The files of one run folder."""

    CONFIG = "config.yaml"
    STATE = "state.pt"
    LOG = "train.log"
    HISTORY = "history.csv"
    TENSORBOARD = "tensorboard"
    METRICS = "metrics.json"
    PER_CLASS = "per_class.csv"
    REPORT = "report.md"
    PLOT_PER_CLASS = "per_class_ap.png"
    PLOT_GROUPS = "groups.png"
    PLOT_CURVES = "curves.png"
    TEST_LOGITS = "test_logits.npy"
    TEST_ROWS = "test_rows.npy"
    EVAL = "eval.json"
    LOCK = ".lmpt-run.lock"  # held by the process writing the folder (rundir.lock)

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def state(self) -> Path:
        return self.root / self.STATE

    @property
    def log(self) -> Path:
        return self.root / self.LOG

    @property
    def metrics(self) -> Path:
        return self.root / self.METRICS

    def weights(self, kind: MethodKind) -> Path:
        """The classifier file of a run of ``kind``."""
        return self.root / kind.weights_file

    def find_weights(self) -> Optional[Path]:
        """The classifier file this folder holds, if any."""
        for name in weights_files():
            if (self.root / name).is_file():
                return self.root / name
        return None

    def holds_run(self) -> bool:
        """Whether a run was started here (its training state or its metrics exist)."""
        return self.state.exists() or self.metrics.exists()

    def is_finished(self) -> bool:
        return self.metrics.is_file()


class SweepLayout(_Folder):
    """The files of a sweep's (or the demo's) folder: one run folder per method and seed, and the summary."""

    SUMMARY_JSON = "summary.json"
    SUMMARY_MD = "summary.md"
    SUMMARY_PNG = "summary.png"
    WORLD_CONFIG = "world.yaml"
    README = "README.md"

    def run(self, method: str, seed: int, seeded: bool = True) -> RunLayout:
        """The run folder of ``method`` with ``seed`` (``seeded=False``: one run for all seeds, e.g. zero-shot)."""
        return RunLayout(self.root / (f"{method}-seed{seed}" if seeded else method))

    @property
    def summary_json(self) -> Path:
        return self.root / self.SUMMARY_JSON


__all__ = ["RunLayout", "SweepLayout"]
