"""The README's demo table and every figure the docs quote from `lmpt demo` are what the last run of
tools/regenerate_demo_docs.py wrote (docs/demo_figures.json): a change of the numbers cannot leave them stale."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from lmpt.engine.studies.sweep import results_digest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("regenerate_demo_docs", ROOT / "tools" / "regenerate_demo_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_equal_the_last_regeneration():
    tool = _tool()
    figures = json.loads(tool.FIGURES.read_text())
    want = tool.render_blocks(figures)
    seen = {}
    for doc in tool.DOCS:
        for name, body in tool.read_blocks(doc.read_text()).items():
            assert body == want[name], f"{doc.name}: block {name} is stale; run python tools/regenerate_demo_docs.py"
            seen[name] = doc.name
    readme_tables = [n for n, doc in seen.items() if doc == "README.md" and n.endswith(":table")]
    assert readme_tables, "the README's demo table must be a regenerated block"
    assert any(n.endswith(":summary") and doc == "demo.md" for n, doc in seen.items())
    # the figures file is one demo's summary, unedited: its digest is recomputed from its numbers
    for name, fig in list(figures["demos"].items()) + list(figures.get("other_cpu", {}).items()):
        assert results_digest(fig) == fig["results_digest"], name


def test_blocks_are_replaced_and_read_back():
    tool = _tool()
    text = "a\n<!-- demo:x -->\nold\n<!-- /demo:x -->\nb\n<!-- demo:y -->\nkeep\n<!-- /demo:y -->\n"
    new = tool.replace_blocks(text, {"x": "new 1\nnew 2\n"})
    assert new == "a\n<!-- demo:x -->\nnew 1\nnew 2\n<!-- /demo:x -->\nb\n<!-- demo:y -->\nkeep\n<!-- /demo:y -->\n"
    assert tool.read_blocks(new) == {"x": "new 1\nnew 2\n", "y": "keep\n"}


def test_a_changed_figure_makes_the_readme_stale():
    """The check bites: one number changed in the figures renders another table."""
    tool = _tool()
    figures = json.loads(tool.FIGURES.read_text())
    before = tool.render_blocks(figures)
    name = next(iter(figures["demos"]))
    figures["demos"][name]["methods"]["lmpt"]["total"]["mean"] += 0.0001
    after = tool.render_blocks(figures)
    assert after[f"{name}:table"] != before[f"{name}:table"]
    assert results_digest(figures["demos"][name]) != figures["demos"][name]["results_digest"]


def test_machines_block_sets_two_cpus_side_by_side():
    """The cross-machine block: gaps computed from both figures, and whether each estimate is in the other's CI."""
    tool = _tool()
    def fig(mean, diff, low, high, cpu):
        return {"methods": {"lmpt": {"total": {"mean": mean, "std": 0.01, "n": 3}}},
                "comparisons": {"lmpt - coop-db": {"total": {"diff": diff, "low": low, "high": high}}},
                "results_digest": cpu * 12, "reproducibility": {"cpu": cpu} if cpu != "x" else {}}
    a, b = fig(0.4488, 0.1277, 0.0356, 0.2198, "A"), fig(0.4588, 0.1512, 0.1300, 0.2322, "x")
    text = tool._machines(a, b)
    assert "| `lmpt` total mAP | 44.88 ± 1.00 | 45.88 ± 1.00 | -1.000 |" in text
    assert "| `lmpt - coop-db` | +12.77 [+3.56, +21.98] | +15.12 [+13.00, +23.22] | -2.350 |" in text
    assert "CPU not recorded" in text and "for 0 of 1 comparisons" in text  # 12.77 is below the other's 13.00
    b["comparisons"]["lmpt - coop-db"]["total"]["low"] = 0.0702
    assert "for 1 of 1 comparisons" in tool._machines(a, b)
