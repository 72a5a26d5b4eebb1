"""Peak memory of one COCO-LT-sized LMPT training step (80 classes, batch 64), and what the CSE loss saves.

A real CLIP text tower (random weights; memory does not depend on them), 80 COCO class prompts with
16 context tokens, cached image features, caption token embeddings: one forward + backward + SGD step of
``lam * DB + (1 - lam) * CSE``. The same step is then run with a naive CSE that builds the
``[B, C, L, D]`` difference tensor, for contrast.

    python bench/memory.py [--model RN50] [--classes 80] [--batch 64] [--device cpu]

Each variant runs its first step in a fresh process (so memory freed by an earlier step and kept by the
allocator cannot hide anything). On the CPU the figure is the rise of the process's peak resident memory
(``VmHWM``, reset just before the step through ``/proc/self/clear_refs``, Linux only) above the memory after
setup; on CUDA it is ``torch.cuda.max_memory_allocated`` above what was allocated before the step. Prints one
JSON line per figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from lmpt.backbone import create_clip  # noqa: E402
from lmpt.data.benchmarks import benchmark_class_names  # noqa: E402
from lmpt.losses import ClassSpecificEmbeddingLoss, DistributionBalancedLoss, LMPTLoss  # noqa: E402
from lmpt.model import PromptCLIP  # noqa: E402
from lmpt.prompts import cse_length, encode_token_embeddings  # noqa: E402


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMeter:
    """Peak memory above the level at ``start()``, in MiB (CUDA allocator or process RSS)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.base = _status_kb("VmRSS") * 1024

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (_status_kb("VmHWM") * 1024 - self.base) / 2**20


def naive_cse(loss: ClassSpecificEmbeddingLoss, cap: torch.Tensor, prm: torch.Tensor, y: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """The reference's way: a ``[B, C, L, D]`` broadcast, then cosine per position (mean distance, hinge)."""
    t = cap.shape[1] - loss.shift
    c = F.normalize(cap[:, :t], dim=-1)[:, None]  # [B, 1, t, D]
    p = F.normalize(prm[:, loss.shift:], dim=-1)[None]  # [1, C, t, D]
    cos = (c * p).sum(-1)  # materialises [B, C, t, D]
    m = mask[:, None, :t]
    dist = ((1 - cos) * m).sum(-1) / m.sum(-1).clamp_min(1)
    term = y * dist + (1 - y) * F.relu(loss.margins - dist)
    return (loss.weights * term).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="RN50")
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--caption-tokens", type=int, default=24, help="caption length L (COCO-LT captions: ~20)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", choices=("lmpt", "naive"), help=argparse.SUPPRESS)  # internal: one child run
    args = ap.parse_args()
    if args.variant is None:  # parent: one fresh process per variant, then the size of one [B, C, L, D] tensor
        for variant in ("lmpt", "naive"):
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant], check=True)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    names = benchmark_class_names("coco-lt")
    names = (names * (args.classes // len(names) + 1))[: args.classes]
    backbone = create_clip(args.model, None)
    model = PromptCLIP(backbone, names).to(device)
    pl = model.prompt_learner
    width, dim = pl.ctx.shape[-1], backbone.embed_dim
    counts = torch.randint(1, 500, (args.classes,)).tolist()
    cls_loss = DistributionBalancedLoss(counts, num_train=1909, mu=0.2, neg_scale=2.0, focal="batch")
    cse = ClassSpecificEmbeddingLoss(counts).to(device)
    loss_fn = LMPTLoss(cls_loss, cse, lam=0.5).to(device)
    L = cse_length(args.caption_tokens, pl.seq_len, cse.shift, pl.context_length)
    feats = torch.randn(args.batch, dim, device=device)
    cap = F.normalize(torch.randn(args.batch, L, width, device=device), dim=-1)
    mask = torch.ones(args.batch, L, device=device)
    y = (torch.rand(args.batch, args.classes, device=device) < 0.05).float()
    opt = torch.optim.SGD([pl.ctx], lr=5e-4, momentum=0.9)
    scale = model.logit_scale

    def step(naive: bool) -> None:
        opt.zero_grad(set_to_none=True)
        prompts = pl(max(pl.seq_len, L))
        text = F.normalize(encode_token_embeddings(model.clip, prompts[:, : pl.seq_len], pl.eot), dim=-1)
        logits = scale * F.normalize(feats, dim=-1) @ text.t()
        if naive:
            loss = 0.5 * cls_loss(logits, y) + 0.5 * naive_cse(cse, cap, prompts[:, :L], y, mask)
        else:
            loss = loss_fn(logits, y, caption_emb=cap, prompt_emb=prompts[:, :L], caption_mask=mask)["loss"]
        loss.backward()
        opt.step()

    meter = PeakMeter(device)
    meter.start()
    step(args.variant == "naive")
    label = "lmpt_step" if args.variant == "lmpt" else "naive_cse_step"
    print(json.dumps({"figure": f"peak_memory_{label}", "mib": round(meter.peak_mib(), 1), "model": args.model,
                      "classes": args.classes, "batch": args.batch, "cse_len": L, "prompt_len": pl.seq_len,
                      "device": str(device)}), flush=True)
    if args.variant == "naive":
        bcld = args.batch * args.classes * (L - cse.shift) * width * 4 / 2**20
        print(json.dumps({"figure": "size_of_one_BCLD_fp32_tensor", "mib": round(bcld, 1),
                          "shape": [args.batch, args.classes, L - cse.shift, width]}))


if __name__ == "__main__":
    main()
