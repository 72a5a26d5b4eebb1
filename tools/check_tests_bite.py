"""Do the tests bite? Plant one fault at a time in a copy of ``src/`` and check that a named test fails.

Each fault is a literal substitution (or a few) in one source file (each exact text must occur once) and the tests that
guard the behaviour it breaks. The script copies ``src/`` to a temporary folder, applies one fault, runs those
tests against the copy (``PYTHONPATH``), and reports whether they failed ("caught") as they must.

    python tools/check_tests_bite.py [--only NAME[,NAME...]] [--list]

Exit code 1 when any fault survives. Takes about 10-20 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (file under src/lmpt, original text, faulty text, tests that must fail)
FAULTS = {
    "lam-inverted": ("engine/train/loss.py", "lo.lam if cse is not None else 1.0", "1 - lo.lam if cse is not None else 1.0",
                     ["tests/test_fidelity.py::test_engine_loss_is_lam_db_plus_one_minus_lam_cse"]),
    "cse-grad-detached": ("engine/train/prompt.py", "own_rows_only(prompts[:, : self.cse_len])",
                          "own_rows_only(prompts[:, : self.cse_len].detach())",
                          ["tests/test_fidelity.py::test_cse_gradient_reaches_the_prompts"]),
    "db-focal-dropped": ("losses/__init__.py", ', "focal": loss_cfg.db_focal}', "}",
                         ["tests/test_fidelity.py::test_engine_loss_is_lam_db_plus_one_minus_lam_cse"]),
    "cli-method-ignored": ("cli/commands.py", '("method", "run.method"), ', "",
                           ["tests/test_cli.py::test_options_and_overrides_in_any_order"]),
    "resume-forgets-best": ("engine/train/loop.py", 'dict(state["best"])', "best",
                            ["tests/test_fidelity.py::test_resume_keeps_the_best_epoch_under_select_val"]),
    "zeroshot-templates-ignored": ("engine/train/zeroshot.py", "dataset.class_names, cfg.run.templates",
                                   'dataset.class_names, "ensemble"',
                                   ["tests/test_fidelity.py::test_zeroshot_template_mode_is_used"]),
    "plateau-mode-flipped": ("engine/train/builders.py", '"min" if plateau_metric(o, has_val) == "train" else "max"',
                             '"max" if plateau_metric(o, has_val) == "train" else "min"',
                             ["tests/test_fidelity.py::test_plateau_schedule_follows_validation_up_and_training_loss_down"]),
    "clip-preprocess-squashes": ("data/images.py", 'if PREPROCESSING[mode].resize == "squash":', "if True:",
                                 ["tests/test_fidelity.py::test_clip_preprocessing_resizes_the_short_side_and_crops"]),
    "cache-key-without-ids-and-paths": ("data/features.py",
                                        '        "ids": split.ids,\n        "paths": [os.path.abspath(p) for p in split.paths],\n',
                                        "", ["tests/test_features.py::test_key_covers_ids_paths_and_precision"]),
    "manifest-split-seed-ignored": ("data/sources.py", "val_fraction=0.0 if val else val_fraction, seed=split_seed",
                                    "val_fraction=0.0 if val else val_fraction, seed=0",
                                    ["tests/test_fidelity.py::test_split_seed_changes_the_validation_split_of_manifests"]),
    "run-folder-guard-removed": ("engine/rundir/outputs.py", "            if not resume and layout.holds_run():",
                                 "            if False:", ["tests/test_cli.py::test_resume_refuses_changed_settings"]),
    "db-weights-with-grad": ("losses/db.py", "        with torch.no_grad():\n            y = targets.to(",
                             "        with torch.enable_grad():\n            y = targets.to(",
                             ["tests/test_losses.py::test_db_weights_have_no_grad_path"]),
    "asl-sum-by-default": ("losses/asl.py", 'eps: float = 1e-8, reduction: str = "mean"', 'eps: float = 1e-8, reduction: str = "sum"',
                           ["tests/test_losses.py::test_asl_defaults_are_the_references"]),
    "asl-weight-with-grad": ("losses/asl.py", "torch.set_grad_enabled(self.focal_grad and torch.is_grad_enabled())",
                             "torch.set_grad_enabled(torch.is_grad_enabled())",
                             ["tests/test_losses.py::test_asl_value_and_gradient_match_the_reference"]),
    # two defences guard the chunks (a folder per chunk size, the row range in each chunk): remove both
    "chunks-of-any-size-joined": ("data/features.py",
                                  ('folder / f"chunks-{int(chunk_size)}"', 'if feats.shape[0] != stop - start or '
                                   'meta.get("start") != str(start) or meta.get("stop") != str(stop):'),
                                  ('folder / "chunks"', "if False:"),
                                  ["tests/test_features.py::test_resume_with_another_chunk_size_equals_a_fresh_extraction"]),
    "final-cache-not-checked": ("data/features.py", 'if feats.shape[0] != n or meta.get("rows") != str(n) or '
                                'meta.get("images") != images:', "if False:",
                                ["tests/test_features.py::test_a_cache_of_another_image_list_is_never_read"]),
    "fp16-without-scaler": ("engine/train/step.py", '    return torch.amp.GradScaler(device.type)', "    return None",
                            ["tests/test_fidelity.py::test_fp16_training_scales_the_loss"]),
    "probe-lr-from-optim": ("engine/train/builders.py", "section.optimizer_name, params, section.lr,",
                            "section.optimizer_name, params, cfg.optim.lr,",
                            ["tests/test_fidelity.py::test_linear_probe_trains_with_the_db_loss_and_zero_shot_init"]),
    "zeroshot-keeps-unlabelled": ("engine/train/zeroshot.py", "rows = np.flatnonzero(split.labels.sum(axis=1) > 0)",
                                  "rows = np.arange(len(split))",
                                  ["tests/test_fidelity.py::test_zeroshot_reference_protocol"]),
    "sweep-reuses-stale-runs": ("engine/studies/sweep.py", 'if metrics.get("identity") == run_identity(cfg, prepared):',
                                "if True:", ["tests/test_fidelity.py::test_sweep_redoes_a_run_whose_settings_changed"]),
    "excluded-not-counted": ("metrics.py", 'out["excluded"] = int(np.isnan(a).sum())', 'out["excluded"] = 0',
                             ["tests/test_metrics.py::test_lt_map_groups_hand_example"]),
    "openai-by-fp16": ("weights_file.py", "openai = any(k in sd for k in OPENAI_MARKER_KEYS)",
                       'openai = any(k in sd for k in OPENAI_MARKER_KEYS) or ("text_projection" in sd and all('
                       'v.dtype == torch.float16 for v in sd.values() if v.is_floating_point()))',
                       ["tests/test_model.py::test_fp16_gelu_export_is_not_taken_for_openai"]),
    "predict-default-threshold-fixed": ("predictor.py", "t = thresholds if threshold is None else",
                                        "t = np.full_like(thresholds, 0.5) if threshold is None else",
                                        ["tests/test_predict.py::test_predict_uses_each_classs_threshold_unless_told_otherwise"]),
    "predict-scores-uncalibrated": ("engine/use/inference.py",
                                    'self.calibrated = bool(meta.get("calibration"))',
                                    "self.calibrated = False",
                                    ["tests/test_engine.py::test_eval_and_predict_use_the_checkpoint"]),
    "predict-stops-at-a-corrupt-file": ("predictor.py", "                if strict:\n", "                if True:\n",
                                        ["tests/test_predict.py::test_predict_folder_skips_a_corrupt_file"]),
    "calibration-without-fallback": ("calibration.py", "own = y.sum(axis=0) >= min_positives",
                                     "own = y.sum(axis=0) >= 0",
                                     ["tests/test_calibration.py::test_fit_calibration_falls_back_for_classes_without_positives"]),
    "bn-adapt-keeps-momentum": ("batchnorm.py", "        layer.momentum = None\n", "",
                                ["tests/test_parity.py::test_adapt_is_the_cumulative_average_of_batch_statistics"]),
    "bn-train-stats-not-saved": ("engine/train/image_features.py", "        return batchnorm_state(self.visual)",
                                 "        return {}",
                                 ["tests/test_parity.py::test_train_mode_resume_equals_an_uninterrupted_run"]),
    "plateau-test-ignored": ("engine/train/loop.py", "            metric = row[_PLATEAU_KEYS[plateau_on]]",
                             '            metric = row["train_loss"]',
                             ["tests/test_parity.py::test_plateau_on_test_drops_the_lr_when_test_map_stalls_for_six_epochs"]),
    "probe-raw-normalised": ("model.py", '        if self.input == "raw":\n            return self.linear(x)\n', "",
                             ["tests/test_parity.py::test_probe_raw_input_is_w_times_the_raw_feature_plus_b"]),
    "export-drops-calibration": ("engine/use/export.py", "torch.sigmoid(logits.double() * self.cal_a + self.cal_b).float()",
                                 "torch.sigmoid(logits)", ["tests/test_predict.py::test_export_round_trip"]),
    "int8-static-skips-convs": ("engine/use/export.py", 'op_types_to_quantize=["Conv", "MatMul", "Gemm"]',
                                'op_types_to_quantize=["MatMul", "Gemm"]',
                                ["tests/test_deploy.py::test_int8_static_quantizes_the_convolutions_with_calibrated_ranges"]),
}


def run_fault(name: str, spec: tuple, keep: bool = False) -> tuple[bool, float, str]:
    rel, old, new, tests = spec
    work = Path(tempfile.mkdtemp(prefix=f"bite-{name}-"))
    try:
        shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        path = work / "src" / "lmpt" / rel
        text = path.read_text()
        pairs = zip(old, new) if isinstance(old, tuple) else [(old, new)]  # one fault may need several edits
        for before, after in pairs:
            if text.count(before) != 1:
                return False, 0.0, f"the original text occurs {text.count(before)} times in {rel}: update the fault"
            text = text.replace(before, after)
        path.write_text(text)
        env = dict(os.environ, PYTHONPATH=str(work / "src"), HF_HUB_OFFLINE="1")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        tail = (proc.stdout.strip().splitlines() or [""])[-1]
        return proc.returncode != 0, time.perf_counter() - t0, tail
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated fault names")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    names = list(FAULTS) if not args.only else args.only.split(",")
    if args.list:
        print("\n".join(f"{n}: {FAULTS[n][0]} -> {', '.join(FAULTS[n][3])}" for n in names))
        return 0
    survived = []
    for name in names:
        caught, seconds, tail = run_fault(name, FAULTS[name])
        print(f"{'caught  ' if caught else 'SURVIVED'} {name:<34} {seconds:6.1f} s  {tail}", flush=True)
        if not caught:
            survived.append(name)
    print(f"{len(names) - len(survived)} of {len(names)} faults caught" + (f"; survived: {', '.join(survived)}"
                                                                        if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
