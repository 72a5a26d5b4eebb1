"""A reference-style training loop, written to time what the LMPT reference code does per run.

What it reproduces (the reference's per-run work that docs/speed.md, "What makes lmpt fast", removes), on the
same data, model and losses as lmpt's path:
  * images decoded and encoded by the frozen image encoder at every step (batch 64, random flip),
    data loading in the main process (``num_workers=0``);
  * the text encoder run on the full context (77 tokens for OpenAI CLIP) for every step;
  * after every epoch a full test evaluation that re-encodes the class prompts for every test batch;
  * the frozen towers at the run's precision (``run.precision``: fp32 on a CPU, bf16 autocast on a GPU, as
    lmpt's own path; the reference itself runs CLIP in fp16 on GPUs).
It is a timing harness only: it shares lmpt's losses so the work per step is comparable.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lmpt.data.images import PreprocessConfig, load_image, transform_from_signature
from lmpt.engine.config import Config
from lmpt.engine.prepared import Prepared, caption_embeddings
from lmpt.engine.train.builders import build_prompt_model
from lmpt.engine.train.loss import resolve_loss
from lmpt.metrics import average_precision
from lmpt.precision import autocast
from lmpt.prompts import encode_token_embeddings


def reference_style_run(cfg: Config, prepared: Prepared, epochs: int, device: torch.device,
                        on_epoch: Optional[Callable[[int, float], None]] = None,
                        max_batches: Optional[int] = None) -> dict:
    """Train ``epochs`` epochs the reference's way; returns timings (seconds) and the last test mAP.

    ``max_batches`` cuts every epoch's training and its test evaluation to that many batches (for timing
    at CLIP size, where a whole epoch takes long on a CPU); ``train_batch_s`` / ``test_batch_s`` hold the
    time of every batch.
    """
    model = build_prompt_model(cfg, prepared.backbone, prepared.class_names, device)
    loss_fn = resolve_loss(cfg, prepared.dataset).build(prepared.dataset).to(device)
    pl = model.prompt_learner
    full = pl.context_length
    caps = caption_embeddings(cfg, prepared, length=full) if loss_fn.cse_loss is not None else None
    cap_emb = caps.embeddings.to(device) if caps is not None else None
    cap_mask = caps.mask.to(device) if caps is not None else None
    sig = PreprocessConfig(mode=cfg.data.preprocess).resolve(prepared.backbone)
    transform = transform_from_signature(sig)
    ds = prepared.dataset
    train = ds.train
    labels = torch.as_tensor(train.labels, dtype=torch.float32)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)
    scale = float(model.logit_scale)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    bs = cfg.optim.batch_size
    times, train_batch_s, test_batch_s = [], [], []
    last_map = float("nan")
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        for b, start in enumerate(range(0, len(perm), bs)):
            if max_batches is not None and b >= max_batches:
                break
            tb = time.perf_counter()
            idx = perm[start:start + bs]
            images = []
            for i in idx.tolist():
                x = transform(load_image(train.paths[i]))
                if torch.rand((), generator=gen) < 0.5:
                    x = torch.flip(x, dims=(-1,))
                images.append(x)
            images = torch.stack(images).to(device)
            with torch.no_grad(), autocast(device, cfg.run.precision):
                img = F.normalize(model.clip.encode_image(images).float(), dim=-1)
            prompts = pl(full)
            with autocast(device, cfg.run.precision):
                text = F.normalize(encode_token_embeddings(model.clip, prompts, pl.eot, eot_only=False).float(), dim=-1)
            logits = scale * img @ text.t()
            y = labels[idx].to(device)
            if cap_emb is not None:
                out = loss_fn(logits, y, caption_emb=cap_emb[idx.to(device)], prompt_emb=prompts,
                              caption_mask=cap_mask[idx.to(device)])
            else:
                out = loss_fn(logits, y)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_batch_s.append(time.perf_counter() - tb)
        with autocast(device, cfg.run.precision):
            last_map = _reference_test_eval(model, ds.test.paths, ds.test.labels, transform, full, scale, device, bs,
                                            max_batches, test_batch_s)
        times.append(time.perf_counter() - t0)
        if on_epoch is not None:
            on_epoch(epoch, times[-1])
    return {"epoch_s": times, "test_map_softmax": last_map, "train_batch_s": train_batch_s,
            "test_batch_s": test_batch_s, "train_images": len(train), "test_images": len(ds.test)}


@torch.no_grad()
def _reference_test_eval(model, paths, labels, transform, full, scale, device, bs, max_batches=None,
                         batch_s=None) -> float:
    model.eval()
    pl = model.prompt_learner
    scores = []
    for b, start in enumerate(range(0, len(paths), bs)):
        if max_batches is not None and b >= max_batches:
            labels = labels[:start]
            break
        tb = time.perf_counter()
        images = torch.stack([transform(load_image(p)) for p in paths[start:start + bs]]).to(device)
        img = F.normalize(model.clip.encode_image(images).float(), dim=-1)
        text = F.normalize(encode_token_embeddings(model.clip, pl(full), pl.eot, eot_only=False).float(), dim=-1)  # every batch
        scores.append(torch.softmax(scale * img @ text.t(), dim=1).float().cpu())
        if batch_s is not None:
            batch_s.append(time.perf_counter() - tb)
    ap = average_precision(torch.cat(scores).numpy(), labels)
    return float(np.nanmean(ap))
