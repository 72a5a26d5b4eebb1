"""Methods x seeds in one go: the ablation table (mean ± std of total/head/medium/tail mAP)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from .. import distributed as dist_utils
from ..io import atomic_write_json, atomic_write_text
from .config import Config, validate
from .data import Prepared, prepare, resolve_device
from .report import GROUPS, mean_std, plot_group_bars, summary_table
from .train import ORACLE_LABEL, train

logger = logging.getLogger(__name__)


def run_sweep(cfg: Config, methods: Sequence[str], seeds: Sequence[int], out_dir: Union[str, Path],
              prepared: Optional[Prepared] = None, title: str = "sweep",
              on_run: Optional[Callable[[str, int, dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Train every (method, seed) on the same prepared data and summarise.

    Finished runs (their ``metrics.json`` exists) are reused, so an interrupted sweep continues where
    it stopped. Zero-shot does not depend on the seed and runs once. Writes ``summary.json``,
    ``summary.md`` and ``summary.png`` into ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if prepared is None:
        prepared = prepare(cfg, resolve_device(cfg.run.device))
    runs: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        method_seeds = [seeds[0]] if method == "zeroshot" else list(seeds)
        for seed in method_seeds:
            run_cfg = cfg.copy()
            run_cfg.run.method = method
            run_cfg.run.seed = int(seed)
            validate(run_cfg)
            run_dir = out / (method if method == "zeroshot" else f"{method}-seed{seed}")
            metrics_path = run_dir / "metrics.json"
            if metrics_path.is_file():
                metrics = json.loads(metrics_path.read_text())
                logger.info("reusing finished run %s", run_dir)
            else:
                resume = (run_dir / "state.pt").is_file()
                metrics = train(run_cfg, prepared=prepared, run_dir=run_dir, resume=resume).metrics
            runs.setdefault(method, []).append({"seed": seed, "run_dir": str(run_dir), "headline": metrics["headline"],
                                                "val": _val_headline(metrics), "oracle": metrics.get("oracle", False)})
            if on_run is not None:
                on_run(method, seed, metrics)
    summary = summarise(runs, cfg)
    if dist_utils.is_main():
        write_summary(out, summary, title)
    return summary


def _val_headline(metrics: dict[str, Any]) -> Optional[dict[str, float]]:
    val = metrics.get("val")
    if not val:
        return None
    return {g: val[metrics["protocol"]][g] for g in GROUPS}


def summarise(runs: dict[str, list[dict[str, Any]]], cfg: Config) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    val: dict[str, Any] = {}
    for method, items in runs.items():
        methods[method] = {g: mean_std([r["headline"][g] for r in items]) for g in GROUPS}
        if all(r["val"] for r in items):
            val[method] = {g: mean_std([r["val"][g] for r in items]) for g in GROUPS}
    oracle = any(r["oracle"] for items in runs.values() for r in items)
    return {"methods": methods, "val": val, "runs": runs, "protocol": cfg.run.protocol,
            "selection": ORACLE_LABEL if oracle else cfg.run.select, "oracle": oracle}


def write_summary(out: Path, summary: dict[str, Any], title: str) -> None:
    atomic_write_json(out / "summary.json", summary)
    note = (f"Test mAP (%), {summary['protocol']} protocol, mean ± sample std over seeds; "
            f"model selection: {summary['selection']}.")
    if summary["oracle"]:
        note += " **test-selected (oracle): optimistic, for comparison with the reference protocol only.**"
    text = [f"# {title}", "", summary_table(summary["methods"], note), ""]
    if summary["val"]:
        text += ["## Validation mAP", "", summary_table(summary["val"]), ""]
    text += ["![summary](summary.png)", ""]
    atomic_write_text(out / "summary.md", "\n".join(text))
    try:
        plot_group_bars(out / "summary.png", {m: {g: v[g]["mean"] for g in GROUPS} for m, v in summary["methods"].items()},
                        title, errors={m: {g: v[g]["std"] for g in GROUPS} for m, v in summary["methods"].items()})
    except Exception as exc:
        logger.warning("could not draw the summary plot: %s", exc)
