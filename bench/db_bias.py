"""Choose the DB loss's init-bias scale ``kappa`` and the learning rate for the world, on its validation split.

The DB loss adds a class bias ``v_c = logit(n_c / N) * kappa / neg_scale`` to the logits before its
negative-tolerant scaling. The reference's ``kappa = 0.05`` comes from CNN classifiers that learn their own
bias; a prompt-tuned CLIP has none, so ``v_c`` is the only prior the loss sees (``kappa = neg_scale`` puts it
at the class prior's logit). The learning rate scales how far SGD moves the prompts; the logits' gradient grows
with CLIP's logit scale (100 for OpenAI's CLIP and, since issue 14, for the world's). For each
``kappa`` x ``lr`` x ``lam``: ``coop-db`` and ``lmpt``; 50 epochs, last epoch, validation mAP (softmax protocol)
per seed, then the mean over seeds. The decision rule, fixed before the runs: the ``(kappa, lr)`` with the best
mean of the two DB-based methods, then ``lam`` by ``lmpt``'s mean. ``--coop`` adds ``coop`` (BCE) at each lr.

    python bench/db_bias.py [--seeds 0,1,2] [--kappas 0.05,5,20,50,100] [--lrs 5e-4] [--lams 0.5] [--cache-dir DIR]

Prints one JSON line per run, then a Markdown table. About 12 minutes on 2 CPU cores (world cached) for the
default grid.
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
    ap.add_argument("--lrs", default="5e-4", help="SGD learning rates (the reference: 5e-4)")
    ap.add_argument("--lams", default="0.5", help="lmpt's classification weight lam (the paper: 0.5)")
    ap.add_argument("--coop", action="store_true", help="also coop (BCE) at each learning rate")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--cache-dir", default=None, help="where the world lives (default: lmpt's cache)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    base, prepared = setup_world(args, "lmpt-db-bias-")

    specs = []
    for lr in (float(v) for v in args.lrs.split(",")):
        if args.coop:
            specs.append({"run.method": "coop", "optim.lr": lr})
        for kappa in (float(v) for v in args.kappas.split(",")):
            db = f"{{kappa: {kappa:g}}}"
            specs.append({"run.method": "coop-db", "optim.lr": lr, "loss.db": db})
            specs += [{"run.method": "lmpt", "optim.lr": lr, "loss.db": db, "loss.lam": float(lam)}
                      for lam in args.lams.split(",")]
    rows = run_specs(specs, seeds, base, prepared)

    print(f"\n| method | lr | kappa | lam | val total | head | medium | tail |  (mean over seeds {args.seeds})")
    print("|---|---|---|---|---|---|---|---|")
    for spec in specs:
        m = mean_row(rows, spec)
        kappa = spec["loss.db"][8:-1] if "loss.db" in spec else "–"
        print(f"| {spec['run.method']} | {spec['optim.lr']:g} | {kappa} | {spec.get('loss.lam', '–')} | "
              f"{m['total']:.1f} | {m['head']:.1f} | {m['medium']:.1f} | {m['tail']:.1f} |")


if __name__ == "__main__":
    main()
