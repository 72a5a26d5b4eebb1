"""What a run writes: its folder, log file, TensorBoard scalars, history, metrics, per-class CSV, test logits
and the report (the file names: :class:`~lmpt.engine.rundir.layout.RunLayout`)."""
from __future__ import annotations

import csv
import io
import logging
import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from ... import distributed as dist_utils
from ...batchnorm import has_batchnorm
from ...errors import ConfigError
from ...io import atomic_path, atomic_write_json, atomic_write_text, make_dir, stable_hash, write_error
from ..config import Config
from ..prepared import Prepared
from ..validation import RESUMABLE
from .layout import RunLayout
from .scoring import headline, per_class_rows

logger = logging.getLogger(__name__)

ORACLE_LABEL = "test-selected (oracle)"
SELECTION_LABELS = {"last": "last epoch", "val": "best on validation", "test": ORACLE_LABEL}


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def default_run_name(cfg: Config) -> str:
    backbone = cfg.model.backbone.replace("/", "-")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.data.dataset}-{backbone}-{cfg.run.method}-seed{cfg.run.seed}-{stamp}"


def run_dir_path(cfg: Config, run_dir: Optional[Union[str, Path]] = None) -> Path:
    """Where a run writes: ``run_dir``, or ``run.output_dir / run.name`` (a timestamped name by default)."""
    return Path(run_dir) if run_dir else Path(cfg.run.output_dir) / (cfg.run.name or default_run_name(cfg))


@contextmanager
def open_run_dir(cfg: Config, run_dir: Optional[Union[str, Path]] = None, resume: bool = False
                 ) -> Iterator[RunLayout]:
    """The run folder, created and locked (:mod:`.lock`) while the block runs; refuses to start a new run in a
    folder that holds one. A run that fails before it has a checkpoint or results removes the folder it created
    (no empty timestamped folders); its error says what went wrong."""
    from .lock import run_folder_lock

    path = run_dir_path(cfg, run_dir)
    layout = RunLayout(path)
    if not dist_utils.is_main():
        yield layout
        return
    created = not path.exists()
    make_dir(path, "run folder")
    try:
        with run_folder_lock(layout):
            if not resume and layout.holds_run():
                raise ConfigError(f"run folder {path} already holds a run; continue it with `lmpt train --resume "
                                  f"{path}` or choose another run.name / run.output_dir")
            yield layout
    except BaseException:
        if created and not layout.holds_run() and layout.find_weights() is None:
            shutil.rmtree(path, ignore_errors=True)
        raise


class _QuietFileHandler(logging.FileHandler):
    """The run's log file; a record that cannot be written (full disk) is dropped, not printed with a traceback
    (the console still gets it, and the write that matters, the checkpoint, reports the problem)."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


@contextmanager
def run_log(layout: RunLayout) -> Iterator[None]:
    """Copy the ``lmpt`` loggers' records into the run's log file while the block runs (rank 0 only).

    It adds a handler and sets no levels: what reaches it is decided where logging is set up (the CLI).
    """
    if not dist_utils.is_main():
        yield
        return
    try:
        handler = _QuietFileHandler(layout.log)
    except OSError as exc:
        raise write_error(layout.log, exc) from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("lmpt").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("lmpt").removeHandler(handler)
        handler.close()


class TensorBoardLog:
    def __init__(self, folder: Path, enabled: bool) -> None:
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(folder))
            except Exception as exc:  # tensorboard is optional
                logger.info("TensorBoard logging off (%s)", exc)

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(k.replace("_", "/", 1), v, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_history(layout: RunLayout, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    keys = list(history[0].keys())
    for row in history[1:]:
        keys += [k for k in row if k not in keys]
    lines = [",".join(keys)] + [",".join(fmt(row.get(k)) for k in keys) for row in history]
    atomic_write_text(layout / RunLayout.HISTORY, "\n".join(lines) + "\n")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: fmt(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _unseen(split, class_names: list[str]) -> Optional[list[str]]:
    if split is None:
        return None
    return [class_names[i] for i in np.flatnonzero(split.labels.sum(axis=0) == 0)]


def run_identity(cfg: Config, prepared: Prepared) -> dict[str, str]:
    """What makes two runs the same run: the settings that change results, and the data and backbone they read.

    Paths, devices and progress settings (``validation.RESUMABLE``) are left out of the config part; the data
    part hashes class names, image ids, labels and captions of every split, and the backbone's fingerprint.
    """
    settings = cfg.to_dict()
    for section, keys in RESUMABLE.items():
        for key in keys:
            settings[section].pop(key, None)
    ds = prepared.dataset
    splits = {name: None if s is None else {"ids": s.ids, "labels": s.labels.tolist(), "captions": s.captions}
              for name, s in (("train", ds.train), ("val", ds.val), ("test", ds.test))}
    data = {"classes": ds.class_names, "class_freq": ds.class_freq.tolist(), "splits": splits,
            "backbone": prepared.backbone.fingerprint}
    return {"config": stable_hash(settings), "data": stable_hash(data)}


def run_metrics(cfg: Config, prepared: Prepared, test: dict[str, Any], val: Optional[dict[str, Any]],
                selection: str, selected_epoch: Optional[int]) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    ds = prepared.dataset
    groups = ds.groups()
    val_unseen = _unseen(ds.val, ds.class_names)
    return {
        "method": cfg.run.method,
        "seed": cfg.run.seed,
        "selection": selection,
        "selected_epoch": selected_epoch,
        "oracle": cfg.run.select == "test",
        "protocol": cfg.run.protocol,
        "headline": headline(test, cfg.run.protocol),
        "test": {k: v for k, v in test.items() if k != "per_class_ap"},
        "val": None if val is None else {k: v for k, v in val.items() if k != "per_class_ap"},
        "per_class_ap": test["per_class_ap"],
        "dataset": {"name": ds.name, "classes": ds.num_classes, "train_images": len(ds.train),
                    "val_images": len(ds.val) if ds.val is not None else 0, "test_images": len(ds.test),
                    "groups": {g: [ds.class_names[i] for i in idx] for g, idx in groups.items()},
                    "val_classes_without_positives": None if val_unseen is None else len(val_unseen),
                    "val_unseen_classes": val_unseen,
                    "test_classes_without_positives": len(_unseen(ds.test, ds.class_names))},
        "backbone": prepared.backbone.describe(),
        "batchnorm": {"mode": cfg.model.batchnorm, "has_batchnorm": has_batchnorm(prepared.backbone.model.visual)},
        "identity": run_identity(cfg, prepared),
    }


def write_run_files(layout: RunLayout, prepared: Prepared, metrics: dict[str, Any], history: list[dict[str, Any]],
                    test: dict[str, Any]) -> None:
    """The metrics, the per-class CSV and the report (rank 0)."""
    from .report import write_run_report

    atomic_write_json(layout.metrics, metrics)
    write_csv(layout / RunLayout.PER_CLASS, per_class_rows(prepared.dataset, test))
    write_run_report(layout, metrics, history)
    head = metrics["headline"]
    label = f" [{ORACLE_LABEL}]" if metrics["oracle"] else ""
    logger.info("test mAP (%s)%s: total %.4f head %.4f medium %.4f tail %.4f", metrics["protocol"], label,
                head["total"], head["head"], head["medium"], head["tail"])


def save_test_logits(layout: RunLayout, logits: Any, rows: Optional[np.ndarray] = None) -> None:
    """Store a run's test logits (float32) for later comparisons; ``rows`` index the full test split."""
    for name, array in ((RunLayout.TEST_LOGITS, np.asarray(logits, dtype=np.float32)),
                        (RunLayout.TEST_ROWS, None if rows is None else np.asarray(rows, dtype=np.int64))):
        if array is None:
            (layout / name).unlink(missing_ok=True)
            continue
        with atomic_path(layout / name) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, array)
