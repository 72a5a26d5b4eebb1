"""A finished sweep beside the paper (``lmpt compare``): each method's total/head/medium/tail mAP, the paper's
figure where the paper gives one, the difference, and the protocol each row used.

The paper's figures known here are LMPT's total mAP (PapersWithCode entries; docs/method.md): VOC-LT 85.44
(RN50) / 87.88 (ViT-B/16), COCO-LT 58.97 / 66.19. Its head/medium/tail breakdown and the baselines' rows could
not be retrieved, so those cells stay empty rather than quoted from memory.

Protocols, per run (from its config):

* ``reference-exact``: what the reference's train.py does, step for step (in fp32): checkpoint chosen on test
  (``--select-on test``), the plateau schedule stepped on test mAP (``optim.plateau_on=test``) and, for a
  backbone with BatchNorm, the drifting statistics (``model.batchnorm=train``); the linear probe on raw features.
* ``oracle``: selected on the test set, otherwise lmpt's protocol.
* ``honest``: nothing is chosen or scheduled on the test set.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ...errors import UserError
from ..rundir.layout import RunLayout, SweepLayout

PAPER_TOTAL = {("voc-lt", "RN50"): 85.44, ("voc-lt", "ViT-B-16"): 87.88,
               ("coco-lt", "RN50"): 58.97, ("coco-lt", "ViT-B-16"): 66.19}
GROUPS = ("total", "head", "medium", "tail")


def _family(backbone: str) -> str:
    return backbone.replace("-quickgelu", "").replace("ViT-B/16", "ViT-B-16")


def run_protocol(config: dict[str, Any], has_batchnorm: bool) -> str:
    """``reference-exact``, ``oracle`` or ``honest`` for a run's saved config (see the module docstring)."""
    run, optim, model = config.get("run", {}), config.get("optim", {}), config.get("model", {})
    if run.get("method") == "zeroshot":
        return "reference-exact" if run.get("zeroshot_protocol") == "reference" else "honest"
    if run.get("select") != "test":
        return "honest"
    exact = optim.get("plateau_on") == "test" and (model.get("batchnorm") == "train" or not has_batchnorm)
    if run.get("method") == "linear-probe":
        exact = exact and config.get("probe", {}).get("input") == "raw"
    return "reference-exact" if exact else "oracle"


def _pct(x: Optional[float]) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def compare_with_paper(sweep_dir: Union[str, Path]) -> dict[str, Any]:
    """Rows of the comparison: ``{"rows": [...], "dataset", "backbone", "paper_key"}`` (mAP in %)."""
    layout = SweepLayout(sweep_dir)
    if not layout.summary_json.is_file():
        raise UserError(f"{layout.root} holds no finished sweep (no {SweepLayout.SUMMARY_JSON}); pass the folder "
                        "`lmpt sweep` wrote")
    summary = json.loads(layout.summary_json.read_text())
    rows, dataset, backbone = [], None, None
    for method, runs in summary["runs"].items():
        protocols = set()
        for r in runs:
            run_layout = RunLayout(r["run_dir"])
            config = yaml.safe_load(run_layout.config.read_text()) if run_layout.config.is_file() else {}
            metrics = json.loads(run_layout.metrics.read_text()) if run_layout.metrics.is_file() else {}
            dataset = dataset or metrics.get("dataset", {}).get("name") or config.get("data", {}).get("dataset")
            backbone = backbone or _family(str(config.get("model", {}).get("backbone", "")))
            has_bn = metrics.get("batchnorm", {}).get("has_batchnorm", True)
            protocols.add(run_protocol(config, has_bn))
        stats = summary["methods"][method]
        row = {"method": method, "runs": len(runs), "protocol": "/".join(sorted(protocols)),
               **{g: 100 * stats[g]["mean"] if stats[g]["mean"] is not None else None for g in GROUPS},
               **{f"{g}_std": 100 * stats[g]["std"] if stats[g]["std"] is not None else None for g in GROUPS}}
        paper = PAPER_TOTAL.get((dataset, backbone)) if method == "lmpt" else None
        row["paper_total"] = paper
        row["diff_total"] = None if paper is None or row["total"] is None else row["total"] - paper
        rows.append(row)
    return {"rows": rows, "dataset": dataset, "backbone": backbone,
            "paper_key": f"{dataset} {backbone}" if (dataset, backbone) in PAPER_TOTAL else None}


def paper_table(comparison: dict[str, Any]) -> str:
    """Markdown table of :func:`compare_with_paper`, with a line saying what the paper column is."""
    lines = ["| method | total | head | medium | tail | paper total | difference | protocol | runs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in comparison["rows"]:
        cells = [f"{_pct(r[g])} ± {_pct(r[g + '_std'])}" if r[g] is not None else "" for g in GROUPS]
        diff = "" if r["diff_total"] is None else f"{r['diff_total']:+.2f}"
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {_pct(r['paper_total'])} | {diff} | "
                     f"{r['protocol']} | {r['runs']} |")
    key = comparison["paper_key"]
    note = (f"Paper: LMPT's total mAP on {key} (arXiv 2305.04536, via PapersWithCode); the paper's head/medium/tail "
            "and baseline rows are not known here." if key else
            "The paper gives no figure for this data set and backbone (it reports VOC-LT and COCO-LT with RN50 and "
            "ViT-B/16).")
    return "\n".join(lines + ["", "Test mAP (%), mean ± std over seeds. " + note,
                              "Protocols: honest (nothing chosen or scheduled on test), oracle (checkpoint chosen on "
                              "test), reference-exact (the reference's run step for step, in fp32)."])


__all__ = ["PAPER_TOTAL", "compare_with_paper", "paper_table", "run_protocol"]
