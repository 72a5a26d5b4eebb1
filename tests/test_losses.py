"""Tests for lmpt.losses: every formula against independent plain-python/numpy loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lmpt.errors import ConfigError
from lmpt.losses import (
    AsymmetricLoss,
    BCELoss,
    ClassSpecificEmbeddingLoss,
    DistributionBalancedLoss,
    FocalLoss,
    LMPTLoss,
    build_classification_loss,
    db_preset,
)

VOC_FREQ = [6, 34, 8, 14, 154, 17, 249, 29, 479, 4, 240, 48, 11, 20, 775, 100, 5, 82, 7, 64]
VOC_N = 1142
COCO_FREQ = [1128, 37, 276, 32, 9, 41, 18, 87, 20, 50, 11, 13, 8, 97, 19, 49, 70, 17, 7, 10, 8, 6, 7, 7, 100,
             39, 189, 31, 24, 11, 12, 8, 35, 10, 25, 21, 17, 10, 20, 460, 84, 498, 126, 207, 173, 366, 39, 35,
             44, 36, 29, 25, 14, 45, 16, 73, 585, 153, 164, 44, 624, 25, 200, 137, 70, 89, 73, 127, 91, 175, 9,
             237, 119, 292, 87, 113, 15, 21, 6, 11]
COCO_N = 1909


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _bce(z: float, y: float) -> float:
    # -[y log s(z) + (1-y) log(1-s(z))], written with log1p for stability
    return max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))


def _rand_problem(seed: int, b: int, c: int, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g, dtype=torch.float64) * scale
    targets = (torch.rand(b, c, generator=g) < 0.3).to(torch.float64)
    return logits, targets


# ----------------------------------------------------------------------------- DB loss


def _db_loop(z, y, freq, n_train, alpha=0.1, beta=10.0, mu=0.3, kappa=0.05, neg_scale=5.0, gamma=2.0,
             balance=2.0, focal="elementwise"):
    b_, c_ = len(z), len(z[0])
    terms, bces = [], []
    for b in range(b_):
        r = sum(y[b][c] / freq[c] for c in range(c_))
        for c in range(c_):
            if r == 0:
                w = 1.0 + alpha  # limit of sigmoid(+inf) + alpha
            else:
                w = _sig(beta * ((1.0 / freq[c]) / r - mu)) + alpha
            v = -math.log(n_train / freq[c] - 1.0) * kappa / neg_scale
            zz = z[b][c] + v
            if y[b][c] == 0:
                zz *= neg_scale
                w /= neg_scale
            l = _bce(zz, y[b][c])
            bces.append(l)
            terms.append((w, l))
    n = len(terms)
    if focal == "elementwise":
        return sum(balance * (1 - math.exp(-l)) ** gamma * w * l for w, l in terms) / n
    pt = math.exp(-sum(bces) / n)
    return balance * (1 - pt) ** gamma * sum(w * l for w, l in terms) / n


@pytest.mark.parametrize("focal", ["elementwise", "batch"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_db_matches_loop(focal, seed):
    freq = [5, 40, 12, 300, 77, 9]
    n_train = 500
    logits, targets = _rand_problem(seed, 7, len(freq))
    targets[3] = 0  # an all-negative row
    kw = dict(alpha=0.1, beta=10.0, mu=0.2, kappa=0.05, neg_scale=2.0, gamma=2.0, balance=2.0)
    loss = DistributionBalancedLoss(freq, n_train, focal=focal, **kw)(logits, targets)
    ref = _db_loop(logits.tolist(), targets.tolist(), freq, n_train, focal=focal, **kw)
    assert loss.item() == pytest.approx(ref, rel=1e-6)  # buffers are float32


def test_db_modes_differ_and_bad_mode():
    logits, targets = _rand_problem(3, 8, 20)
    a = DistributionBalancedLoss(VOC_FREQ, VOC_N, focal="elementwise")(logits, targets)
    b = DistributionBalancedLoss(VOC_FREQ, VOC_N, focal="batch")(logits, targets)
    assert not torch.isclose(a, b)
    with pytest.raises(ValueError, match="'sample'.*elementwise.*batch"):
        DistributionBalancedLoss(VOC_FREQ, VOC_N, focal="sample")


def test_db_ntr_bias_voc_range():
    loss = DistributionBalancedLoss(VOC_FREQ, VOC_N, **db_preset("voc-lt"))
    v = loss.init_bias.double().numpy()
    expected = [-math.log(VOC_N / n - 1) * 0.05 / 5.0 for n in VOC_FREQ]
    np.testing.assert_allclose(v, expected, rtol=1e-6)
    assert -0.058 < v.min() < -0.056
    assert 0.007 < v.max() < 0.009


def test_db_does_not_modify_inputs_and_grad_finite():
    logits, targets = _rand_problem(4, 6, 20, scale=30.0)  # reference-sized logits
    logits = logits.float().requires_grad_(True)
    targets = targets.float()
    before_l, before_t = logits.detach().clone(), targets.clone()
    for focal in ("elementwise", "batch"):
        loss = DistributionBalancedLoss(VOC_FREQ, VOC_N, focal=focal)(logits, targets)
        assert torch.equal(logits.detach(), before_l) and torch.equal(targets, before_t)
        (g,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(g).all() and g.abs().sum() > 0


def test_db_weights_have_no_grad_path():
    logits, targets = _rand_problem(5, 4, 6)
    targets = targets.clone().requires_grad_(True)  # a grad path from the targets would show here
    loss = DistributionBalancedLoss([5, 40, 12, 300, 77, 9], 500)
    w = loss.rebalance_weights(targets)
    assert not w.requires_grad
    assert w.shape == targets.shape
    # and the loss's gradient w.r.t. the targets comes only from the BCE term, never through w:
    # d/dy of sum(w * bce(z, y)) with w constant is -w * z (per element, before focal and NTR scaling)
    z = logits.clone().requires_grad_(True)
    value = DistributionBalancedLoss([5, 40, 12, 300, 77, 9], 500, gamma=0.0, kappa=0.0, neg_scale=1.0,
                                     balance=1.0)(z, targets)
    (gy,) = torch.autograd.grad(value, targets)
    w_const = loss.rebalance_weights(targets.detach())
    torch.testing.assert_close(gy, -w_const * z.detach() / z.numel())


def test_db_half_input_and_buffers():
    loss = DistributionBalancedLoss(np.array(VOC_FREQ), VOC_N)
    assert loss.class_freq.dtype == torch.float32 and loss.init_bias.dtype == torch.float32
    assert {n for n, _ in loss.named_buffers()} == {"class_freq", "init_bias"}
    logits, targets = _rand_problem(6, 5, 20)
    full = loss(logits.float(), targets.float())
    half = loss(logits.half(), targets.half())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=1e-2)


def test_db_validation():
    with pytest.raises(ValueError, match=r"class_freq\[2\] = 0"):
        DistributionBalancedLoss([3, 4, 0], 10)
    with pytest.raises(ValueError, match=r"class_freq\[1\] = 10.*num_train = 10"):
        DistributionBalancedLoss([3, 10, 5], 10)
    loss = DistributionBalancedLoss([3, 4, 5], 10)
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="3 classes|built for 3"):
        loss(torch.zeros(2, 4), torch.zeros(2, 4))


def test_db_presets():
    voc, coco = db_preset("voc-lt"), db_preset("COCO_LT")
    assert voc == dict(alpha=0.1, beta=10.0, mu=0.3, kappa=0.05, neg_scale=5.0, gamma=2.0, balance=2.0)
    assert coco == dict(alpha=0.1, beta=10.0, mu=0.2, kappa=0.05, neg_scale=2.0, gamma=2.0, balance=2.0)
    voc["mu"] = 99  # a copy: the preset table is unchanged
    assert db_preset("voc-lt")["mu"] == 0.3
    with pytest.raises(ValueError, match="coco-lt.*voc-lt"):
        db_preset("imagenet-lt")
    DistributionBalancedLoss(COCO_FREQ, COCO_N, **coco)  # constructible


# ----------------------------------------------------------------------------- CSE loss


def _cse_loop(cap, prm, y, freq, margin, gamma, shift, form, distance, mask=None):
    """Per-position distances with explicit loops over b, c, t."""
    b_, length, _ = cap.shape
    c_ = prm.shape[0]
    t_ = length - shift
    freq = np.asarray(freq, dtype=np.float64)
    m_c = [margin / n ** 0.25 for n in freq]
    raw = [n ** (-gamma) for n in freq]
    w_c = [r / sum(raw) for r in raw]
    total = 0.0
    for b in range(b_):
        for c in range(c_):
            xs, ms = [], []
            for t in range(t_):
                a, p = cap[b, t], prm[c, t + shift]
                cos = float(np.dot(a, p) / (np.linalg.norm(a) * np.linalg.norm(p)))
                xs.append(1.0 - cos)
                ms.append(1.0 if mask is None else float(mask[b, t]))
            if distance == "sum":
                d = sum(xs)
            else:
                d = sum(m * x for m, x in zip(ms, xs)) / max(sum(ms), 1.0)
            if form == "reference":
                term = max(0.0, m_c[c] - (2 * y[b, c] - 1) * d)
            else:
                term = d if y[b, c] == 1 else max(0.0, m_c[c] - d)
            total += w_c[c] * term
    return total / (b_ * c_)


def _cse_inputs(seed, b=4, c=5, length=7, d=6, near=False):
    g = torch.Generator().manual_seed(seed)
    cap = torch.randn(b, length, d, generator=g, dtype=torch.float64)
    prm = torch.randn(c, length, d, generator=g, dtype=torch.float64)
    if near:  # some pairs close, so hinge terms relu(m - D) are active with the mean distance
        prm[:, 2:] = cap[0, :-2].unsqueeze(0) + 0.05 * prm[:, 2:]
    y = (torch.rand(b, c, generator=g) < 0.4).to(torch.float64)
    y[0, 0], y[1, 0] = 1.0, 0.0
    return cap, prm, y


@pytest.mark.parametrize("form", ["hinge", "reference"])
@pytest.mark.parametrize("distance", ["sum", "mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cse_matches_loop(form, distance, seed):
    freq = [4, 30, 7, 120, 15]
    cap, prm, y = _cse_inputs(seed, near=True)
    margin = 0.2 if distance == "sum" else 0.9  # large margin so the negatives' hinge is sometimes active
    loss = ClassSpecificEmbeddingLoss(freq, margin=margin, gamma=2.0, shift=2, form=form, distance=distance)
    got = loss(cap, prm, y).item()
    ref = _cse_loop(cap.numpy(), prm.numpy(), y.numpy(), freq, margin, 2.0, 2, form, distance)
    assert got == pytest.approx(ref, rel=1e-6)  # margins/weights are float32 buffers


@pytest.mark.parametrize("form", ["hinge", "reference"])
def test_cse_mean_with_mask(form):
    freq = [4, 30, 7, 120, 15]
    cap, prm, y = _cse_inputs(3, near=True)
    g = torch.Generator().manual_seed(11)
    mask = torch.rand(cap.shape[:2], generator=g) < 0.6
    mask[2] = False  # a row without any valid position: denominator clamped, D = 0
    loss = ClassSpecificEmbeddingLoss(freq, margin=0.9, shift=2, form=form, distance="mean")
    got = loss(cap, prm, y, caption_mask=mask).item()
    ref = _cse_loop(cap.numpy(), prm.numpy(), y.numpy(), freq, 0.9, 2.0, 2, form, "mean", mask=mask.numpy())
    assert got == pytest.approx(ref, rel=1e-6)  # margins/weights are float32 buffers
    # the float mask gives the same value; no mask differs from this mask
    assert loss(cap, prm, y, caption_mask=mask.double()).item() == pytest.approx(got, rel=1e-12)
    assert loss(cap, prm, y).item() != pytest.approx(got, rel=1e-6)


def test_cse_mean_without_mask_is_sum_over_positions():
    freq = [4, 30, 7, 120, 15]
    cap, prm, _ = _cse_inputs(4)
    s = ClassSpecificEmbeddingLoss(freq, distance="sum").distances(cap, prm)
    m = ClassSpecificEmbeddingLoss(freq, distance="mean").distances(cap, prm)
    torch.testing.assert_close(m, s / (cap.shape[1] - 2))


def test_cse_margins_and_weights_voc():
    loss = ClassSpecificEmbeddingLoss(VOC_FREQ)
    m = loss.margins.double().numpy()
    w = loss.weights.double().numpy()
    n = np.array(VOC_FREQ, dtype=np.float64)
    np.testing.assert_allclose(m, 0.2 * n ** -0.25, rtol=1e-6)
    assert 0.037 < m.min() < 0.039 and 0.140 < m.max() < 0.142
    assert w.sum() == pytest.approx(1.0, rel=1e-6)
    assert w[VOC_FREQ.index(4)] == pytest.approx(0.33, abs=0.01)
    assert loss.margins.dtype == loss.weights.dtype == torch.float32


def test_reference_softmax_over_counts_is_degenerate_ours_is_finite():
    counts = torch.tensor(VOC_FREQ, dtype=torch.float32)
    s32 = torch.softmax(counts, dim=0)  # the reference's "class_counts"
    assert s32.max() == 1.0 and (s32 == 0).sum() == len(VOC_FREQ) - 1  # exactly one-hot in fp32
    s = torch.softmax(counts.double(), dim=0)
    assert s.max() == 1.0 and (s == 0).sum() > 0  # max rounds to 1 and many exact zeros in fp64 too
    ref_margin = 0.2 / s ** 0.25
    ref_w = s ** -2.0 / (s ** -2.0).sum()
    assert torch.isinf(ref_margin).any() and torch.isnan(ref_w).any()
    ours = ClassSpecificEmbeddingLoss(VOC_FREQ)
    assert torch.isfinite(ours.margins).all() and torch.isfinite(ours.weights).all()


@pytest.mark.parametrize("freq", [VOC_FREQ, COCO_FREQ, [1, 10, 1000, 100000]], ids=["voc", "coco", "wide"])
@pytest.mark.parametrize("form,distance", [("hinge", "mean"), ("reference", "sum")])
def test_cse_finite_with_real_counts(freq, form, distance):
    c = len(freq)
    g = torch.Generator().manual_seed(0)
    cap = torch.randn(6, 12, 16, generator=g).half()  # fp16 like the reference's token embeddings
    prm = torch.randn(c, 12, 16, generator=g, requires_grad=True)
    y = (torch.rand(6, c, generator=g) < 0.2).float()
    loss = ClassSpecificEmbeddingLoss(freq, form=form, distance=distance)
    out = loss(cap, prm, y, caption_mask=torch.ones(6, 12, dtype=torch.bool))
    (grad,) = torch.autograd.grad(out, prm)
    assert torch.isfinite(out) and out.item() > 0
    assert torch.isfinite(grad).all()
    assert torch.isfinite(loss.margins).all() and torch.isfinite(loss.weights).all() and (loss.weights > 0).all()


def test_cse_shift_pairs_caption_t_with_prompt_t_plus_shift():
    freq = [4, 30, 7, 120, 15]
    cap, prm, y = _cse_inputs(5)
    loss = ClassSpecificEmbeddingLoss(freq, shift=2, form="hinge", distance="sum")
    base = loss(cap, prm, y)
    prm2 = prm.clone()
    prm2[:, :2] = torch.randn_like(prm2[:, :2]) * 10  # prompt positions < shift are never used
    cap2 = cap.clone()
    cap2[:, -2:] = torch.randn_like(cap2[:, -2:]) * 10  # neither are the last `shift` caption positions
    assert loss(cap2, prm2, y).item() == pytest.approx(base.item(), rel=1e-12)
    prm3 = prm.clone()
    prm3[:, 2] += 1.0  # the prompt position paired with caption t = 0 matters
    assert loss(cap, prm3, y).item() != pytest.approx(base.item(), rel=1e-9)
    # aligning caption t with prompt t + 2 exactly gives x = 0 at every position
    aligned = torch.zeros_like(prm)
    aligned[:, 2:] = cap[0, :-2]
    d = loss.distances(cap, aligned)
    assert d[0].abs().max().item() < 1e-12 and d[1:].min().item() > 0.1


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_cse_grad_zero_before_shift(shift):
    freq = [4, 30, 7, 120, 15]
    cap, prm, y = _cse_inputs(6)
    prm = prm.requires_grad_(True)
    loss = ClassSpecificEmbeddingLoss(freq, shift=shift, form="reference", distance="sum")
    (g,) = torch.autograd.grad(loss(cap, prm, y), prm)
    assert torch.all(g[:, :shift] == 0)
    assert g[:, shift:].abs().sum() > 0


def test_cse_caller_tensors_unchanged():
    cap, prm, y = _cse_inputs(7)
    copies = [t.clone() for t in (cap, prm, y)]
    ClassSpecificEmbeddingLoss([4, 30, 7, 120, 15])(cap, prm, y)
    for a, b in zip((cap, prm, y), copies):
        assert torch.equal(a, b)


def test_cse_validation():
    with pytest.raises(ValueError, match="'bad'.*hinge.*reference"):
        ClassSpecificEmbeddingLoss([1, 2], form="bad")
    with pytest.raises(ValueError, match="'max'.*mean.*sum"):
        ClassSpecificEmbeddingLoss([1, 2], distance="max")
    with pytest.raises(ValueError, match=r"class_freq\[1\] = 0"):
        ClassSpecificEmbeddingLoss([1, 0])
    loss = ClassSpecificEmbeddingLoss([1, 2, 3])
    cap, prm, y = torch.zeros(4, 7, 6), torch.zeros(3, 7, 6), torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"\(4, 7, 5\)"):
        loss(torch.zeros(4, 7, 5), prm, y)
    with pytest.raises(ValueError, match=r"share L and D.*\(4, 8, 6\)"):
        loss(torch.zeros(4, 8, 6), prm, y)
    with pytest.raises(ValueError, match="2 classes"):
        loss(cap, torch.zeros(2, 7, 6), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"targets.*\(5, 3\)"):
        loss(cap, prm, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="caption_mask"):
        loss(cap, prm, y, caption_mask=torch.ones(4, 6))


class _ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor produced by any aten op (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def _largest_and_bc_shapes(fn, b, c):
    rec = _ShapeRecorder()
    with rec:
        fn()
    biggest = max(math.prod(s) for s in rec.shapes)
    # [B, C] results may appear with extra singleton dims (einsum -> bmm); anything bigger is not allowed
    bc_3d = [s for s in rec.shapes if b in s and c in s and math.prod(s) > b * c]
    return biggest, bc_3d


@pytest.mark.parametrize("distance", ["mean", "sum"])
def test_cse_never_materialises_bcl_tensors(distance):
    b, c, length, d = 64, 80, 24, 512  # distinct sizes, so shapes identify the dims
    g = torch.Generator().manual_seed(0)
    cap = torch.randn(b, length, d, generator=g)
    prm = torch.randn(c, length, d, generator=g, requires_grad=True)
    y = (torch.rand(b, c, generator=g) < 0.1).float()
    mask = torch.rand(b, length, generator=g) < 0.7
    loss = ClassSpecificEmbeddingLoss(COCO_FREQ, distance=distance)

    def ours():
        loss(cap, prm, y, caption_mask=mask).backward()

    biggest, bc_3d = _largest_and_bc_shapes(ours, b, c)
    assert biggest <= max(b, c) * length * d < b * c * length * d
    assert bc_3d == []
    assert prm.grad is not None and torch.isfinite(prm.grad).all()



def test_shape_checker_catches_naive_cse():
    """The checker above can fail: a per-position implementation is caught."""
    b, c, length, d = 6, 8, 5, 16
    cap = torch.randn(b, length, d)
    prm = torch.randn(c, length, d, requires_grad=True)

    def naive():
        cos = F.cosine_similarity(cap[:, None, :-2], prm[None, :, 2:], dim=-1)  # [B, C, L-2]
        (1 - cos).sum(-1).mean().backward()

    biggest, bc_3d = _largest_and_bc_shapes(naive, b, c)
    assert bc_3d and biggest >= b * c * (length - 2) * d


# ----------------------------------------------------------------------------- baselines


def test_bce_focal_match_formulas():
    logits, targets = _rand_problem(8, 5, 7)
    z, y = logits.tolist(), targets.tolist()
    elems = [(z[b][c], y[b][c]) for b in range(5) for c in range(7)]
    bce_ref = sum(_bce(zz, yy) for zz, yy in elems) / len(elems)
    assert BCELoss()(logits, targets).item() == pytest.approx(bce_ref, rel=1e-12)
    for gamma, alpha in [(2.0, None), (1.5, 0.25), (0.0, None)]:
        tot = 0.0
        for zz, yy in elems:
            p = _sig(zz)
            pt = p if yy == 1 else 1 - p
            a = 1.0 if alpha is None else (alpha if yy == 1 else 1 - alpha)
            tot += -a * (1 - pt) ** gamma * math.log(pt)
        got = FocalLoss(gamma=gamma, alpha=alpha)(logits, targets).item()
        assert got == pytest.approx(tot / len(elems), rel=1e-9)
    assert FocalLoss(gamma=0.0)(logits, targets).item() == pytest.approx(bce_ref, rel=1e-9)


def _asl_terms(z, y, gamma_neg, gamma_pos, clip, eps):
    """Per element: (loss term l, focusing weight w, d l_unweighted / d z) in plain float64 Python."""
    out = []
    for zr, yr in zip(z, y):
        row = []
        for zz, yy in zip(zr, yr):
            p = _sig(zz)
            if yy == 1:
                w = (1 - p) ** gamma_pos
                # l = log p * w ; d log p / dz = 1 - p
                row.append((math.log(max(p, eps)), w, (1 - p) if p > eps else 0.0))
            else:
                pm = min(1 - p + clip, 1.0)
                w = (1 - pm) ** gamma_neg
                dlog = (-p * (1 - p) / pm) if (1 - p + clip < 1.0 and pm > eps) else 0.0
                row.append((math.log(max(pm, eps)), w, dlog))
        out.append(row)
    return out


@pytest.mark.parametrize("params", [(4.0, 0.0, 0.05), (2.0, 1.0, 0.0), (3.0, 0.5, 0.2)])
def test_asl_value_and_gradient_match_the_reference(params):
    """Default = LMPT reference: -mean(w * log-terms) with the focusing weight w held constant."""
    gamma_neg, gamma_pos, clip = params
    logits, targets = _rand_problem(9, 6, 5)
    terms = _asl_terms(logits.tolist(), targets.tolist(), gamma_neg, gamma_pos, clip, 1e-8)
    n = 30
    ref_value = -sum(t * w for row in terms for t, w, _ in row) / n
    ref_grad = torch.tensor([[-w * d / n for _, w, d in row] for row in terms], dtype=torch.float64)
    z = logits.clone().requires_grad_(True)
    loss = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)
    value = loss(z, targets)
    assert value.item() == pytest.approx(ref_value, rel=1e-9)
    (g,) = torch.autograd.grad(value, z)
    torch.testing.assert_close(g, ref_grad, rtol=1e-7, atol=1e-12)
    # the original ASL code's sum over elements, labelled as such
    summed = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="sum")
    assert summed(logits, targets).item() == pytest.approx(ref_value * n, rel=1e-9)
    # with focal_grad the weight carries gradient: a different gradient, the same value
    free = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, focal_grad=True)
    z2 = logits.clone().requires_grad_(True)
    v2 = free(z2, targets)
    assert v2.item() == pytest.approx(ref_value, rel=1e-9)
    (g2,) = torch.autograd.grad(v2, z2)
    assert not torch.allclose(g2, ref_grad)
    with pytest.raises(ValueError, match="reduction"):
        AsymmetricLoss(reduction="none")


def test_asl_defaults_are_the_references():
    loss = AsymmetricLoss()
    assert (loss.gamma_neg, loss.gamma_pos, loss.clip, loss.reduction, loss.focal_grad) == (4.0, 0.0, 0.05, "mean",
                                                                                             False)
    # reference-sized logits, batch 64 x 20 classes: mean, not sum (the sum is 1,280x larger)
    logits, targets = _rand_problem(3, 64, 20, scale=25.0)
    mean = loss(logits, targets).item()
    assert AsymmetricLoss(reduction="sum")(logits, targets).item() == pytest.approx(1280 * mean, rel=1e-9)


def test_baselines_grad_finite_for_saturated_logits():
    logits = torch.tensor([[40.0, -40.0, 0.0], [-35.0, 35.0, 3.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    for loss in (BCELoss(), FocalLoss(), FocalLoss(alpha=0.25), AsymmetricLoss(), AsymmetricLoss(gamma_pos=1.0),
                 DistributionBalancedLoss([2, 3, 4], 10)):
        (g,) = torch.autograd.grad(loss(logits, targets), logits)
        assert torch.isfinite(g).all(), type(loss).__name__


# ----------------------------------------------------------------------------- combination


def test_lmpt_loss_combination():
    freq = [4, 30, 7, 120, 15]
    logits, targets = _rand_problem(10, 4, 5)
    cap, prm, _ = _cse_inputs(10)
    cls, cse = BCELoss(), ClassSpecificEmbeddingLoss(freq)
    l_cls, l_cse = cls(logits, targets).item(), cse(cap, prm, targets).item()
    for lam in (0.0, 0.3, 0.5, 1.0):
        out = LMPTLoss(cls, cse, lam=lam)(logits, targets, cap, prm)
        assert set(out) == {"loss", "cls", "cse"}
        assert out["loss"].item() == pytest.approx(lam * l_cls + (1 - lam) * l_cse, rel=1e-12)
        assert out["cls"].item() == pytest.approx(l_cls) and out["cse"].item() == pytest.approx(l_cse)
    only = LMPTLoss(cls, None, lam=0.5)(logits, targets)
    assert only["cse"] is None and only["loss"].item() == pytest.approx(l_cls, rel=1e-12)
    with pytest.raises(ValueError, match="caption_emb"):
        LMPTLoss(cls, cse)(logits, targets)
    mask = torch.ones(cap.shape[:2])
    mask[:, 4:] = 0
    masked = LMPTLoss(cls, cse, lam=0.0)(logits, targets, cap, prm, caption_mask=mask)
    assert masked["loss"].item() == pytest.approx(cse(cap, prm, targets, mask).item(), rel=1e-12)


def test_build_classification_loss():
    db = build_classification_loss("db", VOC_FREQ, VOC_N, **db_preset("voc-lt"), focal="batch")
    assert isinstance(db, DistributionBalancedLoss) and db.focal == "batch" and db.neg_scale == 5.0
    assert isinstance(build_classification_loss("bce", VOC_FREQ, VOC_N), BCELoss)
    focal = build_classification_loss("focal", VOC_FREQ, VOC_N, gamma=1.0)
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.0
    asl = build_classification_loss("ASL", VOC_FREQ, VOC_N, gamma_neg=3.0)
    assert isinstance(asl, AsymmetricLoss) and asl.gamma_neg == 3.0
    with pytest.raises(ConfigError, match="db.*bce.*focal.*asl"):
        build_classification_loss("ce", VOC_FREQ, VOC_N)


def test_buffers_follow_to():
    db = DistributionBalancedLoss(VOC_FREQ, VOC_N).to(torch.float64)
    assert db.init_bias.dtype == torch.float64
    cse = ClassSpecificEmbeddingLoss(torch.tensor(VOC_FREQ))
    assert {n for n, _ in cse.named_buffers()} == {"class_freq", "margins", "weights"}
