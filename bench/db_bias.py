"""Choose the DB loss's init-bias scale ``kappa`` for the world on its validation split (never its test split).

The DB loss adds a class bias ``v_c = logit(n_c / N) * kappa / neg_scale`` to the logits before its
negative-tolerant scaling. The reference's ``kappa = 0.05`` comes from CNN classifiers that learn their own
bias; a prompt-tuned CLIP has none, so ``v_c`` is the only prior the loss sees (``kappa = neg_scale`` puts it
at the class prior's logit). For each ``kappa``: ``coop-db`` and ``lmpt`` (the world config's lam 0.2), and
``lmpt`` at the paper's lam 0.5 for the larger values; 50 epochs, last epoch, validation mAP (softmax protocol)
per seed, then the mean over seeds. The decision rule, fixed before the runs: the ``kappa`` with the best mean
of the two DB-based methods, then ``lam`` by ``lmpt``'s mean.

    python bench/db_bias.py [--seeds 0,1,2] [--kappas 0.05,5,20,50,100] [--cache-dir DIR]

Prints one JSON line per run, then a Markdown table. About 12 minutes on 2 CPU cores with the world cached.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(__file__))

from cse_defaults import mean_row, run_specs, setup_world  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--kappas", default="0.05,5,20,50,100")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--cache-dir", default=None, help="where the world lives (default: lmpt's cache)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    kappas = [float(k) for k in args.kappas.split(",")]
    base, prepared = setup_world(args, "lmpt-db-bias-", ["loss.lam=0.2"])

    specs = []
    for kappa in kappas:
        db = f"{{kappa: {kappa:g}}}"
        specs += [{"run.method": "coop-db", "loss.db": db}, {"run.method": "lmpt", "loss.db": db}]
        if kappa >= 20:
            specs.append({"run.method": "lmpt", "loss.db": db, "loss.lam": 0.5})
    rows = run_specs(specs, seeds, base, prepared)

    print(f"\n| method | kappa | lam | val total | head | medium | tail |  (mean over seeds {args.seeds})")
    print("|---|---|---|---|---|---|---|")
    for spec in specs:
        m = mean_row(rows, spec)
        lam = spec.get("loss.lam", 0.2) if spec["run.method"] == "lmpt" else "–"
        print(f"| {spec['run.method']} | {spec['loss.db'][8:-1]} | {lam} | {m['total']:.1f} | {m['head']:.1f} | "
              f"{m['medium']:.1f} | {m['tail']:.1f} |")


if __name__ == "__main__":
    main()
