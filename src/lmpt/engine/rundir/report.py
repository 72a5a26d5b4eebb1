"""Human-readable outputs: a run's report with results tables and PNG plots, and sweep tables."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ...data.dataset import HEAD_MIN, TAIL_MAX
from ...io import atomic_path, atomic_write_text
from .layout import RunLayout
from .scoring import GROUPS

logger = logging.getLogger(__name__)

GROUP_COLORS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728"}


def pct(x: Optional[float]) -> str:
    """A fraction as a percentage with two decimals ('–' when missing or NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.2f}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_per_class_ap(path: Path, train_counts: Sequence[int], ap: Sequence[float], groups: dict[str, Sequence[int]],
                      class_names: Sequence[str], title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    counts = np.asarray(train_counts, dtype=float)
    ap = np.asarray(ap, dtype=float) * 100
    for group, idx in groups.items():
        idx = np.asarray(idx, dtype=int)
        if len(idx):
            ax.scatter(counts[idx], ap[idx], label=group, color=GROUP_COLORS[group], s=22)
    if len(class_names) <= 30:
        for c, name in enumerate(class_names):
            if not math.isnan(ap[c]):
                ax.annotate(name, (counts[c], ap[c]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test AP (%)")
    ax.set_title(title)
    ax.axvline(HEAD_MIN, color="grey", lw=0.6, ls="--")
    ax.axvline(TAIL_MAX, color="grey", lw=0.6, ls="--")
    ax.legend(loc="lower right")
    _save(fig, path)
    plt.close(fig)


def plot_group_bars(path: Path, series: dict[str, dict[str, float]], title: str,
                    errors: Optional[dict[str, dict[str, float]]] = None) -> None:
    """Grouped bars: one group of bars per total/head/medium/tail, one bar per series (method)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(series)
    width = 0.8 / max(1, len(names))
    x = np.arange(len(GROUPS))
    for i, name in enumerate(names):
        vals = [100 * (series[name].get(g) if series[name].get(g) is not None else float("nan")) for g in GROUPS]
        err = None
        if errors is not None:
            err = [100 * errors[name].get(g, 0.0) for g in GROUPS]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=name, yerr=err, capsize=3 if err else 0)
    ax.set_xticks(x, GROUPS)
    ax.set_ylabel("mAP (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for key, label in (("train_loss", "total"), ("train_cls", "classification"), ("train_cse", "CSE")):
        vals = [r.get(key) for r in history]
        if any(v is not None for v in vals):
            ax1.plot(epochs, [np.nan if v is None else v for v in vals], label=label)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.legend(fontsize=8)
    plotted = False
    for prefix, label in (("val_", "validation"), ("oracle_test_", "test (oracle)")):
        for g in GROUPS:
            vals = [r.get(prefix + g) for r in history]
            if any(v is not None for v in vals):
                ax2.plot(epochs, [np.nan if v is None else 100 * v for v in vals], label=f"{label} {g}",
                         ls="-" if prefix == "val_" else ":")
                plotted = True
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("mAP (%)")
    if plotted:
        ax2.legend(fontsize=7)
    else:
        ax2.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=ax2.transAxes)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def metrics_table(metrics: dict[str, Any], split: str = "test") -> str:
    block = metrics.get(split)
    if not block:
        return ""
    lines = ["| protocol | total | head | medium | tail | CF1 (fixed) | OF1 (fixed) |", "|---|---|---|---|---|---|---|"]
    for protocol in ("softmax", "sigmoid"):
        m = block[protocol]
        lines.append(f"| {protocol} | " + " | ".join(pct(m[k]) for k in (*GROUPS, "CF1", "OF1")) + " |")
    return "\n".join(lines)


def decisions_table(metrics: dict[str, Any]) -> str:
    """Test decisions at the calibrated thresholds, at the fixed threshold and for predict-all (markdown)."""
    d = metrics.get("decisions")
    if not d:
        return ""
    cal = d["calibration"]
    lines = ["| decisions | labels/image | CP | CR | CF1 | OP | OR | OF1 |", "|---|---|---|---|---|---|---|---|"]
    for key, label in (("calibrated", f"calibrated thresholds ({cal['method']}, fitted on {cal['fitted_on']})"),
                       ("fixed", d["fixed"]["label"]), ("predict_all", "every label (for scale)")):
        m = d[key]
        lines.append(f"| {label} | {m['labels_per_image']:.2f} | "
                     + " | ".join(pct(m[k]) for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")) + " |")
    lines.append(f"\ntrue labels per image: {d['calibrated']['true_labels_per_image']:.2f}; expected calibration "
                 f"error of the probabilities: {d['ece']:.3f} (uncalibrated sigmoid: {d['ece_uncalibrated']:.3f})")
    if cal["fitted_on"] != "val":
        lines.append(f"\nnote: no validation split, so calibration and thresholds were fitted on {cal['fitted_on']} "
                     "(optimistic)")
    return "\n".join(lines)


def _schedule_text(schedule: Optional[dict[str, Any]]) -> str:
    if not schedule:
        return "none (nothing trained)"
    on = schedule.get("plateau_on")
    return f"{schedule['name']}" + (f" on {on}" if on else "")


def write_run_report(layout: RunLayout, metrics: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """The report (markdown) with its plots: per-class AP, group bars and, for trained runs, the curves."""
    ds = metrics["dataset"]
    groups_named = ds["groups"]
    import csv

    with open(layout / RunLayout.PER_CLASS) as f:
        rows = list(csv.DictReader(f))
    names = [r["class"] for r in rows]
    counts = [int(r["train_images"]) for r in rows]
    ap = [float(r["ap_" + metrics["protocol"]]) if r["ap_" + metrics["protocol"]] else float("nan") for r in rows]
    index = {n: i for i, n in enumerate(names)}
    groups = {g: [index[n] for n in members] for g, members in groups_named.items()}
    oracle = metrics.get("oracle")
    title = f"{metrics['method']} on {ds['name']}" + (" [test-selected (oracle)]" if oracle else "")
    try:
        plot_per_class_ap(layout / RunLayout.PLOT_PER_CLASS, counts, ap, groups, names, title)
        plot_group_bars(layout / RunLayout.PLOT_GROUPS, {metrics["method"]: metrics["headline"]}, title)
        if history:
            plot_curves(layout / RunLayout.PLOT_CURVES, history)
    except Exception as exc:  # plots are a convenience; never lose the run over them
        logger.warning("could not draw plots: %s", exc)
    bb = metrics["backbone"]
    lines = [f"# {title}", ""]
    if oracle:
        lines += ["> **test-selected (oracle)**: the checkpoint was chosen on the test set (`--select-on test`). "
                  "These numbers are optimistic and only comparable to the reference's protocol.", ""]
    lines += [
        f"- data: {ds['name']}, {ds['classes']} classes, {ds['train_images']} train / {ds['val_images']} val / "
        f"{ds['test_images']} test images",
        f"- backbone: {bb['model']} (weights: {bb['pretrained'] or 'random init'}, fingerprint {bb['fingerprint']})",
        f"- method: {metrics['method']}, seed {metrics['seed']}, selection: {metrics['selection']}"
        + (f" (epoch {metrics['selected_epoch']})" if metrics.get("selected_epoch") else ""),
        f"- headline protocol: {metrics['protocol']} (mAP in %, non-interpolated AP per class)",
        f"- learning-rate schedule: {_schedule_text(metrics.get('schedule'))}; BatchNorm: "
        f"{metrics.get('batchnorm', {}).get('mode', 'frozen')}",
        "",
        "## Test mAP",
        "",
        metrics_table(metrics, "test"),
        "",
    ]
    if metrics.get("val"):
        lines += ["## Validation mAP", "", metrics_table(metrics, "val"), ""]
    if metrics.get("decisions"):
        lines += ["## Test decisions at calibrated thresholds", "", decisions_table(metrics), ""]
    lines += ["## Groups", ""]
    for g in ("head", "medium", "tail"):
        members = groups_named[g]
        lines.append(f"- {g} ({len(members)}): {', '.join(members) if members else '–'}")
    lines += ["", "## Plots", "", f"![per-class AP]({RunLayout.PLOT_PER_CLASS})", "",
              f"![groups]({RunLayout.PLOT_GROUPS})", ""]
    if history:
        lines += [f"![curves]({RunLayout.PLOT_CURVES})", ""]
    lines += [f"Per-class AP: `{RunLayout.PER_CLASS}`. All numbers: `{RunLayout.METRICS}`.", ""]
    atomic_write_text(layout / RunLayout.REPORT, "\n".join(lines))


def mean_std(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(arr) == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": int(len(arr))}


def summary_table(summary: dict[str, dict[str, dict[str, float]]], note: str = "") -> str:
    """Markdown table of mean ± std (in %) per method for total/head/medium/tail."""
    lines = ["| method | total | head | medium | tail | runs |", "|---|---|---|---|---|---|"]
    for method, groups in summary.items():
        cells = [f"{pct(groups[g]['mean'])} ± {pct(groups[g]['std'])}" for g in GROUPS]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {groups['total'].get('n', '')} |")
    if note:
        lines += ["", note]
    return "\n".join(lines)
