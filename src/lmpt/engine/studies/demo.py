"""``lmpt demo``: the whole method on the generated world, with no download.

1. generate (or reuse) the world and pretrain (or reuse) its small CLIP: ordinary inputs (manifests, a
   weights file and its model config JSON), like any user's data;
2. compute (or reuse) the image features;
3. run every demo method over 3 seeds;
4. write ``summary.json``, ``summary.md``, plots, and ``world.yaml`` (a config for more runs on this world:
   ``lmpt train OUT/world.yaml --method coop-db``) into the output folder.

``--quick`` uses a smaller world, a shorter pretraining, fewer epochs and one seed: a smoke test that
exercises every step in under two minutes, not a result.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch
import yaml

from ...io import atomic_write_json, atomic_write_text, make_dir
from ..config import Config, load_config
from ..prepared import prepare
from ..rundir.layout import SweepLayout
from ..rundir.report import summary_table
from .compare import comparison_table
from .sweep import PER_RUN_KEYS, check_sweep_lists, check_sweep_overrides, parse_int_list, run_sweep

logger = logging.getLogger(__name__)

DEMO_METHODS = ("zeroshot", "linear-probe", "coop", "coop-db", "lmpt")
QUICK = {"scale": 0.35, "sizes": {"val": 200, "test": 400, "pretrain": 3000}, "pretrain_steps": 120, "epochs": 12}


def _say(text: str) -> None:
    print(text, flush=True)


def world_overrides(world: Any) -> list[str]:
    """Config overrides that point a run at a built world: its manifests, class list, CLIP and weights."""
    return ["data.dataset=manifest", f"data.train={world.train_manifest}", f"data.val={world.val_manifest}",
            f"data.test={world.test_manifest}", f"data.classes={world.classes_file}",
            f"model.backbone={world.clip_model_name}", f"model.pretrained={world.clip_weights}"]


def world_config_file(world: Any, path: Union[str, Path]) -> Path:
    """Write a config YAML for runs on ``world`` (the built-in ``world`` settings plus its paths)."""
    data = {"base": "world"}
    for text in world_overrides(world):
        dotted, value = text.split("=", 1)
        section, key = dotted.split(".")
        data.setdefault(section, {})[key] = value
    path = Path(path)
    atomic_write_text(path, "# Runs on the generated world written by `lmpt demo`; e.g.\n"
                            f"#   lmpt train {path} --method coop-db\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def world_run_config(overrides: Sequence[str] = ()) -> Config:
    """The built-in ``world`` config pointed at the default world (built on first use, then cached), with
    ``overrides`` on top: what ``lmpt train world`` runs.

    The overrides are checked before the world is built (minutes on the first call); they may name its cache
    folder (``data.cache_dir``).
    """
    cache = load_config("world", overrides, check_source=False).data.cache_dir
    return load_config("world", world_overrides(build_demo_world(cache_dir=cache)) + list(overrides))


def build_demo_world(num_classes: int = 20, world_seed: int = 0, quick: bool = False,
                     cache_dir: Optional[str] = None, world_options: Optional[dict[str, Any]] = None,
                     progress: bool = True):
    """The demo's world (built on first use, then cached)."""
    from ...world import build_world

    kwargs: dict[str, Any] = {}
    if quick:
        kwargs = {"scale": QUICK["scale"], "sizes": QUICK["sizes"], "pretrain_steps": QUICK["pretrain_steps"]}
    kwargs.update(world_options or {})
    return build_world(cache_dir=cache_dir, num_classes=num_classes, seed=world_seed, progress=progress, **kwargs)


def cpu_identity() -> str:
    """The CPU model and the vector instructions torch's kernels use (e.g. "AMD EPYC, AVX512"): results are
    bitwise reproducible on the same CPU type, and another one changes the last bits of trained prompts."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        capability = "unknown"
    return f"{model}, {capability}"


@contextmanager
def reproducible_torch(threads: int) -> Iterator[dict[str, Any]]:
    """``threads`` CPU threads and torch's deterministic algorithms (warnings where it has none), restored after.

    CPU reductions (matrix products, sums) split their work by thread, so the thread count is part of the result;
    the world's CLIP is pretrained with its own fixed count (2). Yields what was set, for the summary.
    """
    prev = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    torch.set_num_threads(int(threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield {"threads": int(threads), "deterministic_algorithms": True, "torch": torch.__version__,
               "cpu": cpu_identity()}
    finally:
        torch.set_num_threads(prev[0])
        torch.use_deterministic_algorithms(prev[1], warn_only=prev[2])


def run_demo(out_dir: Union[str, Path] = "lmpt-demo", quick: bool = False, world_seed: int = 0,
             num_classes: int = 20, seeds: Optional[Union[str, Sequence[int]]] = None,
             cache_dir: Optional[str] = None, device: str = "auto", overrides: Sequence[str] = (),
             world_options: Optional[dict[str, Any]] = None,
             methods: Sequence[str] = DEMO_METHODS, threads: int = 2) -> dict[str, Any]:
    """Run the demo and return the summary (also written to ``out_dir/summary.json``).

    ``world_options`` (``scale``, ``sizes``, ``pretrain_steps``) replace the world's size settings, for tests
    and smoke runs; ``overrides`` are config overrides (``optim.epochs=2``). Features and training run with
    ``threads`` CPU threads and torch's deterministic algorithms, so a rerun on the same machine type and torch
    gives the same ``results_digest``.
    """
    with reproducible_torch(threads) as setting:
        summary = _checked_demo(out_dir, quick, world_seed, num_classes, seeds, cache_dir, device, overrides,
                                world_options, methods, setting)
    return summary


def _checked_demo(out_dir: Union[str, Path], quick: bool, world_seed: int, num_classes: int,
              seeds: Optional[Union[str, Sequence[int]]], cache_dir: Optional[str], device: str,
              overrides: Sequence[str], world_options: Optional[dict[str, Any]], methods: Sequence[str],
              setting: dict[str, Any]) -> dict[str, Any]:
    t_start = time.perf_counter()
    check_sweep_overrides(overrides, "lmpt demo", PER_RUN_KEYS + ("run.output_dir",))
    if seeds is None:
        seed_list = [0] if quick else [0, 1, 2]
    elif isinstance(seeds, str):
        seed_list = parse_int_list(seeds, "--seeds")
    else:
        seed_list = [int(s) for s in seeds]
    check_sweep_lists(methods, seed_list)
    layout = SweepLayout(out_dir)
    out = layout.root
    created = not out.exists()
    make_dir(out, "the demo's output folder")
    try:
        return _run_demo(layout, quick, world_seed, num_classes, seed_list, cache_dir, device, overrides,
                         world_options, methods, t_start, setting)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a demo that failed before writing anything leaves no empty folder
        raise


def _run_demo(layout: SweepLayout, quick: bool, world_seed: int, num_classes: int, seed_list: list[int],
              cache_dir: Optional[str], device: str, overrides: Sequence[str], world_options: Optional[dict[str, Any]],
              methods: Sequence[str], t_start: float, setting: dict[str, Any]) -> dict[str, Any]:
    out = layout.root
    _say(f"[1/4] world: {num_classes} classes, seed {world_seed}{' (quick)' if quick else ''}")
    t0 = time.perf_counter()
    world = build_demo_world(num_classes, world_seed, quick, cache_dir, world_options)
    settings = world_overrides(world) + [f"run.device={device}", f"run.output_dir={out}"]
    if cache_dir:
        settings.append(f"data.cache_dir={cache_dir}")
    if quick:
        settings.append(f"optim.epochs={QUICK['epochs']}")
    cfg = load_config("world", settings + list(overrides))
    world_config_file(world, layout / SweepLayout.WORLD_CONFIG)
    t_world = time.perf_counter() - t0

    _say("[2/4] image features (cached after the first run)")
    t0 = time.perf_counter()
    prepared = prepare(cfg)
    t_feat = time.perf_counter() - t0
    ds = prepared.dataset
    _say(f"      {len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test images; "
         f"small CLIP {'pretrained' if world.pretrained else 'from cache'} ({t_world:.0f} s)")

    n_runs = sum(1 if m == "zeroshot" else len(seed_list) for m in methods)
    _say(f"[3/4] {n_runs} runs: {', '.join(methods)} x seeds {seed_list} ({cfg.optim.epochs} epochs each)")
    t0 = time.perf_counter()
    done = {"n": 0}

    def on_run(method: str, seed: int, metrics: dict[str, Any]) -> None:
        done["n"] += 1
        h = metrics["headline"]
        _say(f"      {done['n']:2d}/{n_runs} {method:<8} seed {seed}: total {100 * h['total']:.2f}  head "
             f"{100 * h['head']:.2f}  medium {100 * h['medium']:.2f}  tail {100 * h['tail']:.2f}")

    summary = run_sweep(cfg, methods, seed_list, out, prepared=prepared,
                        title=f"lmpt demo: generated world ({num_classes} classes)"
                        + (f", every run with {' '.join(overrides)}" if overrides else ""), on_run=on_run)
    t_runs = time.perf_counter() - t0

    _say("[4/4] report")
    timing = {"world_s": round(t_world, 1), "features_s": round(t_feat, 1), "runs_s": round(t_runs, 1),
              "total_s": round(time.perf_counter() - t_start, 1)}
    summary["timing"] = timing
    summary["reproducibility"] = setting
    summary["overrides"] = list(overrides)
    summary["world"] = {"root": str(world.root), "classes": num_classes, "seed": world_seed, "quick": quick,
                        "clip": world.metadata.get("clip", {}), "config": str(layout / SweepLayout.WORLD_CONFIG)}
    atomic_write_json(layout.summary_json, summary)
    _write_demo_readme(layout, summary, quick)
    _say(summary_table(summary["methods"], f"Test mAP (%), {summary['protocol']} protocol, mean ± std over "
                                           f"{len(seed_list)} seed(s); selection: {summary['selection']}."))
    if summary.get("comparisons"):
        _say(f"\nPaired differences (points; 95% interval over {summary['interval_covers']}):\n"
             + comparison_table(summary["comparisons"]))
    _say(f"results digest {summary['results_digest']} (every figure; no paths or timings; CPU {setting['cpu']}: "
         "docs/demo.md, Reproducibility, says which kernels give which figures)")
    _say(f"wrote {layout / SweepLayout.SUMMARY_MD} and {layout.summary_json} in {timing['total_s']:.0f} s; "
         f"more runs on this world: lmpt train {layout / SweepLayout.WORLD_CONFIG} --method coop-db")
    return summary


def _write_demo_readme(layout: SweepLayout, summary: dict[str, Any], quick: bool) -> None:
    text = [
        "# lmpt demo: what this is",
        "",
        "A generated long-tailed multi-label world (coloured, textured objects in cluttered scenes, class names that",
        "are English words, captions for the training images) and a small CLIP pretrained on a separate, balanced",
        "caption corpus. Prompt tuning then runs for real: zero-shot CLIP, a linear probe, CoOp (BCE), CoOp + DB",
        "loss, and LMPT (DB + class-specific embedding loss), each over several seeds. Every run also fits calibrated",
        "probabilities and per-class thresholds on validation (its metrics.json: \"decisions\").",
        "",
        "It shows that the pipeline works end to end and how the methods compare under a long tail. It does not",
        "reproduce the paper's numbers, which need OpenAI CLIP weights and the VOC-LT / COCO-LT images.",
        "",
        "See `summary.md` for the table, `summary.json` for the numbers, one folder per run for its report, and",
        "`world.yaml` for a config that trains on this world (`lmpt train world.yaml --method coop-db`).",
        "The project's docs/demo.md explains the world and what its numbers do and do not show.",
    ]
    if summary.get("overrides"):
        text += ["", "Settings changed for every run (`lmpt demo KEY=VALUE`): " + ", ".join(
            f"`{o}`" for o in summary["overrides"]) + "."]
    if quick:
        text += ["", "**--quick**: a smaller world, a short pretraining and one seed: a smoke test, not a result."]
    atomic_write_text(layout / SweepLayout.README, "\n".join(text) + "\n")
