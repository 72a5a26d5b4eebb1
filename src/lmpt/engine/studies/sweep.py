"""Sweeps: every (method, seed) on one prepared data set, and the summary table.

A finished run is reused only when its recorded identity (the settings that change results, and the data
and backbone it read) equals the requested run's; a stale run folder is moved aside (``<name>.stale-N``), never
deleted, and the run is redone. An interrupted run resumes from its last epoch checkpoint when its settings
match, else it is moved aside the same way.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from ... import distributed as dist_utils
from ...errors import ConfigError
from ...io import atomic_write_json, atomic_write_text, make_dir
from ..config import Config, load_config
from ..prepared import Prepared, prepare, resolve_device
from ..rundir.layout import RunLayout, SweepLayout
from ..rundir.outputs import ORACLE_LABEL, run_identity
from ..rundir.report import GROUPS, mean_std, plot_group_bars, summary_table
from ..train.run import run
from ..validation import check_resume, validate
from .compare import comparison_table, covers_text, default_pairs, paired_differences

logger = logging.getLogger(__name__)


def _move_aside(run_dir: Path, why: str) -> None:
    k = 1
    while run_dir.with_name(f"{run_dir.name}.stale-{k}").exists():
        k += 1
    target = run_dir.with_name(f"{run_dir.name}.stale-{k}")
    run_dir.rename(target)
    logger.warning("%s: %s; moved it to %s and running it again", run_dir, why, target)
    print(f"note: {run_dir} {why}; kept as {target.name}, running it again")


def _reusable(layout: RunLayout, cfg: Config, prepared: Prepared) -> Optional[dict[str, Any]]:
    """The finished run's metrics if it is the requested run; None (after moving a stale folder aside) otherwise."""
    if layout.is_finished():
        metrics = json.loads(layout.metrics.read_text())
        if metrics.get("identity") == run_identity(cfg, prepared):
            logger.info("reusing finished run %s", layout.root)
            return metrics
        _move_aside(layout.root, "holds a run with other settings or data")
    elif layout.config.is_file():
        try:
            check_resume(load_config(layout.config), cfg, str(layout.root))
        except ConfigError:
            _move_aside(layout.root, "holds an unfinished run with other settings")
    return None


def run_sweep(cfg: Config, methods: Sequence[str], seeds: Sequence[int], out_dir: Union[str, Path],
              prepared: Optional[Prepared] = None, title: str = "sweep",
              on_run: Optional[Callable[[str, int, dict[str, Any]], None]] = None,
              n_boot: int = 1000) -> dict[str, Any]:
    """Train every (method, seed) on the same prepared data and summarise into ``out_dir``.

    Zero-shot does not depend on the seed and runs once. Writes ``summary.json``, ``summary.md`` and
    ``summary.png``; the summary compares every method with zero-shot and ``lmpt`` with ``coop-db``
    (paired bootstrap over test images, ``n_boot`` resamples; see :mod:`lmpt.engine.compare`).
    """
    check_sweep_lists(methods, seeds)
    out = SweepLayout(out_dir)
    if prepared is None:
        prepared = prepare(cfg, resolve_device(cfg.run.device))
    make_dir(out.root, "sweep folder")
    runs: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        method_seeds = [seeds[0]] if method == "zeroshot" else list(seeds)
        for seed in method_seeds:
            run_cfg = cfg.copy()
            run_cfg.run.method = method
            run_cfg.run.seed = int(seed)
            validate(run_cfg)
            layout = out.run(method, seed, seeded=method != "zeroshot")
            metrics = _reusable(layout, run_cfg, prepared)
            if metrics is None:
                metrics = run(run_cfg, prepared=prepared, run_dir=layout.root, resume=layout.state.is_file()).metrics
            runs.setdefault(method, []).append({"seed": seed, "run_dir": str(layout.root), "headline": metrics["headline"],
                                                "val": _val_headline(metrics), "oracle": metrics.get("oracle", False)})
            if on_run is not None:
                on_run(method, seed, metrics)
    summary = summarise(runs, cfg)
    ds = prepared.dataset
    summary["comparisons"] = paired_differences(
        {m: [Path(r["run_dir"]) for r in items] for m, items in runs.items()}, ds.test.labels, ds.class_freq,
        default_pairs(list(runs)), protocol=cfg.run.protocol, n_boot=n_boot)
    summary["interval_covers"] = covers_text(summary["comparisons"]) if summary["comparisons"] else None
    summary["results_digest"] = results_digest(summary)
    if dist_utils.is_main():
        write_summary(out, summary, title)
    return summary


def check_sweep_lists(methods: Sequence[str], seeds: Sequence[int]) -> None:
    """Refuse empty or repeated methods or seeds: a repeated one would be counted twice in the mean ± std."""
    for what, items in (("methods", list(methods)), ("seeds", [int(s) for s in seeds])):
        if not items:
            raise ConfigError(f"no {what} given: a sweep needs at least one")
        repeated = sorted({str(x) for x in items if items.count(x) > 1})
        if repeated:
            raise ConfigError(f"{what} {','.join(map(str, items))}: {', '.join(repeated)} given more than once "
                              "(each run would be counted twice); list each once")


def parse_int_list(text: str, flag: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (seeds: non-negative integers), with an error naming ``flag``."""
    try:
        values = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, got {text!r} (e.g. 0,1,2)") from None
    if not values:
        raise ConfigError(f"{flag} is empty; give at least one seed, e.g. {flag} 0,1,2")
    bad = [v for v in values if not 0 <= v < 2 ** 63]
    if bad:
        raise ConfigError(f"{flag} {text}: seeds must be integers from 0 to 2^63-1, got {bad[0]}")
    return values


# Settings every run of a sweep gets from the sweep itself, not from overrides (the demo also sets the folder).
PER_RUN_KEYS = ("run.method", "run.seed", "run.name")


def check_sweep_overrides(overrides: Sequence[str], command: str, keys: Sequence[str] = PER_RUN_KEYS) -> None:
    """Refuse overrides of the settings a sweep sets per run (``run.method=coop`` would be silently replaced)."""
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if key in keys:
            raise ConfigError(f"override '{text}': {command} sets {key} for each of its runs; choose methods "
                              "with --methods, seeds with --seeds and the folder with --out instead")


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


def results_digest(summary: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a summary's results: the methods' and validation tables, the paired
    differences and every run's headline (method, seed, test and validation mAP). Paths and timings are left
    out, so two runs of the same sweep into different folders give the same digest exactly when every figure
    is bitwise equal."""
    runs = {m: [{"seed": r["seed"], "headline": r["headline"], "val": r["val"], "oracle": r["oracle"]}
                for r in items] for m, items in summary["runs"].items()}
    payload = {k: summary.get(k) for k in ("methods", "val", "comparisons", "protocol", "selection")}
    payload["runs"] = runs
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_summary(out: SweepLayout, summary: dict[str, Any], title: str) -> None:
    """The summary of a sweep (or the demo): JSON, markdown and a plot."""
    atomic_write_json(out.summary_json, summary)
    note = (f"Test mAP (%), {summary['protocol']} protocol, mean ± sample std over seeds; "
            f"model selection: {summary['selection']}.")
    if summary["oracle"]:
        note += " **test-selected (oracle): optimistic, for comparison with the reference protocol only.**"
    text = [f"# {title}", "", summary_table(summary["methods"], note), ""]
    if summary.get("comparisons"):
        e = next(iter(summary["comparisons"].values()))
        text += ["## Paired differences", "",
                 comparison_table(summary["comparisons"]), "",
                 "Test mAP difference in points (A - B), each method's mAP the mean over its seeds. The 95% interval "
                 f"covers {covers_text(summary['comparisons'])}: the spread of each method's per-seed mAP (a "
                 f"t-interval; one run adds no seed term) plus {e['resamples']} paired bootstrap resamples of the "
                 "test images (the same images for both methods). A method trained with one seed leaves the seeds "
                 "out. An interval that contains 0 means no measurable difference.", ""]
    if summary["val"]:
        text += ["## Validation mAP", "", summary_table(summary["val"]), ""]
    if summary.get("results_digest"):
        text += [f"Results digest (sha256 of every figure above, no paths or timings): `{summary['results_digest']}`", ""]
    text += [f"![summary]({SweepLayout.SUMMARY_PNG})", ""]
    atomic_write_text(out / SweepLayout.SUMMARY_MD, "\n".join(text))
    try:
        plot_group_bars(out / SweepLayout.SUMMARY_PNG, {m: {g: v[g]["mean"] for g in GROUPS} for m, v in summary["methods"].items()},
                        title, errors={m: {g: v[g]["std"] for g in GROUPS} for m, v in summary["methods"].items()})
    except Exception as exc:
        logger.warning("could not draw the summary plot: %s", exc)
