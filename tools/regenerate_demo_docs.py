"""Regenerate every figure the README and docs/demo.md quote from `lmpt demo`, in one command.

    python tools/regenerate_demo_docs.py                      # run the demos (reusing finished runs in --work)
    python tools/regenerate_demo_docs.py --from main=DIR [--only main]   # read a finished demo folder
    python tools/regenerate_demo_docs.py --check              # exit 1 if a doc block differs from the figures

Each demo of :data:`DEMOS` (``main``: ``lmpt demo``; ``lr``: ``lmpt demo optim.lr=5e-6``; ``quick``:
``lmpt demo --quick``) is run with
``lmpt.engine.studies.demo.run_demo`` into ``--work/<name>`` (finished runs there are reused when their settings
and data are the same; the world and its CLIP come from the cache). Its figures (the summary's results, with
their ``results_digest``, the command, torch, the thread count and the timings) are written to
``docs/demo_figures.json``, and every block between ``<!-- demo:NAME -->`` and ``<!-- /demo:NAME -->`` in
README.md and docs/demo.md is rewritten from that file by :func:`render_blocks`. tests/test_demo_docs.py checks
that the blocks equal what :func:`render_blocks` makes of the figures file, so a change of the numbers (a
refactor, a new interval) cannot leave the README stale: run this script again.

Results are bitwise reproducible on one CPU type, not across types (docs/demo.md, "Reproducibility"). With
``--keep-other-cpu``, a demo's previous figures move to ``other_cpu`` in the figures file when the new run was
made on another CPU (or the previous one did not record its CPU), and the ``NAME:machines`` block sets the two
side by side: the measured spread between machine types. ``--other-cpu`` writes the given demos' figures there
instead, e.g. a run with AVX2 kernels forced on an AVX-512 machine::

    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 lmpt demo --out DIR
    python tools/regenerate_demo_docs.py --from main=DIR --only main --other-cpu
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "demo_figures.json"
DOCS = (ROOT / "README.md", ROOT / "docs" / "demo.md")
DEMOS: dict[str, list[str]] = {"main": [], "lr": ["optim.lr=5e-6"], "quick": ["--quick"]}
BLOCK = re.compile(r"<!-- demo:(?P<name>[\w:-]+) -->\n(?P<body>.*?)<!-- /demo:(?P=name) -->", re.S)
DIGEST_KEYS = ("methods", "val", "comparisons", "protocol", "selection")


def figures_of(summary: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """What the docs quote from one demo's summary (enough to recompute its ``results_digest``)."""
    out = {k: summary.get(k) for k in DIGEST_KEYS}
    out["runs"] = {m: [{"seed": r["seed"], "headline": r["headline"], "val": r["val"], "oracle": r["oracle"]}
                       for r in items] for m, items in summary["runs"].items()}
    out["results_digest"] = summary["results_digest"]
    out["interval_covers"] = summary.get("interval_covers")
    out["command"] = " ".join(["lmpt demo"] + list(overrides) + (["--quick"] if summary.get("world", {}).get("quick")
                                                                  and "--quick" not in overrides else []))
    out["reproducibility"] = summary.get("reproducibility")
    out["timing"] = summary.get("timing")
    out["decisions"] = {}
    for method in ("lmpt", "zeroshot"):
        if summary["runs"].get(method):
            run = summary["runs"][method][0]
            d = json.loads((Path(run["run_dir"]) / "metrics.json").read_text())["decisions"]
            out["decisions"][method] = {"seed": run["seed"], "labels_per_image": d["calibrated"]["labels_per_image"],
                                        "true_labels_per_image": d["calibrated"]["true_labels_per_image"],
                                        "OF1": d["calibrated"]["OF1"], "OF1_every_label": d["predict_all"]["OF1"],
                                        "ece": d["ece"]}
    return out


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}"


def _ci(e: dict[str, Any]) -> str:
    return f"{_pct(e['diff'])} [{_pct(e['low'])}, {_pct(e['high'])}]"


def _mean_std(fig: dict[str, Any], method: str) -> str:
    t = fig["methods"][method]["total"]
    return f"{100 * t['mean']:.2f} ± {100 * t['std']:.2f}"


def _differences(fig: dict[str, Any]) -> str:
    c = fig["comparisons"]
    parts = [f"`{pair.split(' - ')[0]}` - {'zero-shot' if pair.endswith('zeroshot') else '`coop-db`'} "
             f"{_ci(c[pair]['total'])} total" + (f", {_ci(c[pair]['tail'])} tail" if pair == "lmpt - coop-db" else "")
             for pair in ("lmpt - zeroshot", "coop-db - zeroshot", "lmpt - coop-db") if pair in c]
    return (f"Paired differences, 95% intervals over {fig['interval_covers']}: " + "; ".join(parts)
            + f" (results digest `{fig['results_digest'][:12]}`).\n")


def _cpu(fig: dict[str, Any]) -> str:
    return (fig.get("reproducibility") or {}).get("cpu") or "CPU not recorded"


def _machines(fig: dict[str, Any], other: dict[str, Any]) -> str:
    """The same demo on two CPU types: each method's test mAP, each paired difference, and the gaps."""
    head = (f"| | {_cpu(fig)} (digest `{fig['results_digest'][:12]}`) | {_cpu(other)} (digest "
            f"`{other['results_digest'][:12]}`) | gap (points) |")
    rows = [head, "|---|---|---|---|"]
    for method, t in fig["methods"].items():
        if method in other["methods"]:
            a, b = t["total"], other["methods"][method]["total"]
            rows.append(f"| `{method}` total mAP | {100 * a['mean']:.2f} ± {100 * a['std']:.2f} | "
                        f"{100 * b['mean']:.2f} ± {100 * b['std']:.2f} | {100 * (a['mean'] - b['mean']):+.3f} |")
    inside = []
    for pair, e in fig["comparisons"].items():
        if pair in other["comparisons"]:
            a, b = e["total"], other["comparisons"][pair]["total"]
            rows.append(f"| `{pair}` | {_ci(a)} | {_ci(b)} | {100 * (a['diff'] - b['diff']):+.3f} |")
            inside.append(a["low"] <= b["diff"] <= a["high"] and b["low"] <= a["diff"] <= b["high"])
    note = (f"\nEach machine's paired difference lies inside the other's 95% interval for {sum(inside)} of "
            f"{len(inside)} comparisons.\n") if inside else ""
    return "\n".join(rows) + "\n" + note


def render_blocks(figures: dict[str, Any]) -> dict[str, str]:
    """Every doc block's text (ending in a newline) from the figures file: ``NAME:table``, ``NAME:differences``,
    ``NAME:summary``, ``NAME:decisions`` and ``NAME:sentence`` for each demo NAME in it."""
    from lmpt.engine.studies.compare import comparison_table
    from lmpt.engine.rundir.report import summary_table

    blocks: dict[str, str] = {}
    for name, fig in figures["demos"].items():
        c = fig["comparisons"]
        repro = fig.get("reproducibility") or {}
        blocks[f"{name}:table"] = summary_table(fig["methods"]) + "\n"
        blocks[f"{name}:differences"] = _differences(fig)
        blocks[f"{name}:summary"] = "\n".join([
            summary_table(fig["methods"], f"Test mAP (%), {fig['protocol']} protocol, mean ± sample std over seeds; "
                                          f"model selection: {fig['selection']}."),
            "", comparison_table(c), "",
            f"Paired differences in test mAP points (A - B), each method's mAP the mean over its seeds; 95% interval "
            f"over {fig['interval_covers']} (\"Intervals\" below). Validation mAP:", "",
            summary_table(fig["val"]), "",
            f"`{fig['command']}` with {repro.get('threads')} threads, torch {repro.get('torch')}"
            + (f", CPU {repro['cpu']}" if repro.get("cpu") else "") + ": results digest "
            f"`{fig['results_digest']}`.", ""])
        dec = fig.get("decisions", {})
        if "lmpt" in dec and "zeroshot" in dec:
            lm, zs = dec["lmpt"], dec["zeroshot"]
            blocks[f"{name}:decisions"] = (
                f"Decisions at the calibrated thresholds (test split; `metrics.json` -> `decisions`): `lmpt` seed "
                f"{lm['seed']} gives {lm['labels_per_image']:.2f} labels per image against "
                f"{lm['true_labels_per_image']:.2f} true ({lm['labels_per_image'] / lm['true_labels_per_image']:.2f}x), "
                f"OF1 {100 * lm['OF1']:.1f} (every label: {100 * lm['OF1_every_label']:.1f}), ECE {lm['ece']:.3f}; "
                f"zero-shot {zs['labels_per_image']:.2f} ({zs['labels_per_image'] / zs['true_labels_per_image']:.2f}x), "
                f"OF1 {100 * zs['OF1']:.1f}. See [predict.md](predict.md).\n")
        if "lmpt - zeroshot" in c and "coop" in fig["methods"]:
            blocks[f"{name}:sentence"] = (
                f"(`{fig['command']}`: `lmpt` {_mean_std(fig, 'lmpt')} test, {_ci(c['lmpt - zeroshot']['total'])} "
                f"over zero-shot total, {_ci(c['lmpt - zeroshot']['tail'])} tail; `coop` {_mean_std(fig, 'coop')}).\n")
    for name, other in figures.get("other_cpu", {}).items():
        if name in figures["demos"]:
            blocks[f"{name}:machines"] = _machines(figures["demos"][name], other)
    return blocks


def read_blocks(text: str) -> dict[str, str]:
    """The blocks between markers in ``text``: ``{name: body}``."""
    return {m.group("name"): m.group("body") for m in BLOCK.finditer(text)}


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    """``text`` with every marked block whose name is in ``blocks`` rewritten."""
    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in blocks:
            return m.group(0)
        return f"<!-- demo:{name} -->\n{blocks[name]}<!-- /demo:{name} -->"
    return BLOCK.sub(sub, text)


def run_demos(work: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    from lmpt.engine.studies.demo import run_demo

    return {name: run_demo(work / name, quick="--quick" in DEMOS[name],
                           overrides=[o for o in DEMOS[name] if o != "--quick"]) for name in names}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="sources", action="append", default=[], metavar="NAME=DIR",
                    help="read a finished demo folder instead of running it (names: " + ", ".join(DEMOS) + ")")
    ap.add_argument("--work", default="lmpt-demo-docs", help="where the demos run (default ./lmpt-demo-docs)")
    ap.add_argument("--only", default=None, help="comma-separated demo names to regenerate (default all)")
    ap.add_argument("--check", action="store_true", help="only check that the docs match the figures file")
    ap.add_argument("--keep-other-cpu", action="store_true",
                    help="keep a demo's previous figures (other_cpu) when the new run is on another CPU type")
    ap.add_argument("--other-cpu", action="store_true",
                    help="write the figures as other_cpu (e.g. a run with AVX2 kernels forced) and leave demos as is")
    args = ap.parse_args(argv)
    if args.check:
        figures = json.loads(FIGURES.read_text())
        want = render_blocks(figures)
        bad = [f"{doc.name}: {name}" for doc in DOCS for name, body in read_blocks(doc.read_text()).items()
               if want.get(name) != body]
        print("stale: " + ", ".join(bad) if bad else "the docs match docs/demo_figures.json")
        return 1 if bad else 0
    names = args.only.split(",") if args.only else list(DEMOS)
    summaries: dict[str, dict[str, Any]] = {}
    for item in args.sources:
        name, _, folder = item.partition("=")
        if name not in DEMOS:
            ap.error(f"--from {item}: unknown demo {name!r}; known: {', '.join(DEMOS)}")
        summaries[name] = json.loads((Path(folder) / "summary.json").read_text())
    summaries.update(run_demos(Path(args.work), [n for n in names if n not in summaries]))
    figures = json.loads(FIGURES.read_text()) if FIGURES.is_file() else {"demos": {}}
    for name, summary in summaries.items():
        if list(summary.get("overrides", [])) + (["--quick"] if summary["world"]["quick"] else []) != DEMOS[name]:
            ap.error(f"demo {name!r} ran with {summary.get('overrides')}, expected {DEMOS[name]}")
        fig = figures_of(summary, [o for o in DEMOS[name] if o != "--quick"])
        if args.other_cpu:
            if _cpu(fig) == _cpu(figures["demos"].get(name, {})):
                ap.error(f"demo {name!r} ran on {_cpu(fig)}, the CPU of the figures it would sit beside")
            figures.setdefault("other_cpu", {})[name] = fig
            continue
        previous = figures["demos"].get(name)
        if args.keep_other_cpu and previous and _cpu(previous) != _cpu(fig):
            figures.setdefault("other_cpu", {})[name] = previous
        figures["demos"][name] = fig
    figures["written"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from lmpt.io import atomic_write_text

    atomic_write_text(FIGURES, json.dumps(figures, indent=1) + "\n")
    blocks = render_blocks(figures)
    for doc in DOCS:
        text = doc.read_text()
        new = replace_blocks(text, blocks)
        if new != text:
            atomic_write_text(doc, new)
            print(f"rewrote {doc.relative_to(ROOT)}: " + ", ".join(sorted(read_blocks(text))))
    print(f"wrote {FIGURES.relative_to(ROOT)}: " + ", ".join(
        f"{n} {f['results_digest'][:12]}" for n, f in sorted(figures["demos"].items())))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
