"""Label sets of the generated world: long-tailed profiles, scene sampling, greedy selection.

An image's objects come from one scene: 1-4 objects, drawn with the classes' weights; an
object's partner (see :data:`~lmpt.world.vocab.PAIRS`) often joins it; a class may appear
twice ("two dogs"). A split is built as the DB-loss paper built VOC-LT: draw a large pool of
label sets, then greedily pick pool items until every class reaches its target count.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .vocab import PAIRS, class_scenes, select_classes

__all__ = ["VOC_LT_PROFILE", "COCO_LT_PROFILE", "lt_profile", "LabelSet", "WorldSpec", "make_spec",
           "sample_pool", "greedy_select", "sample_split", "sample_balanced", "label_matrix"]

# Per-class training image counts of VOC-LT and COCO-LT, sorted (largest first).
VOC_LT_PROFILE = (775, 479, 249, 240, 154, 100, 82, 64, 48, 34, 29, 20, 17, 14, 11, 8, 7, 6, 5, 4)
COCO_LT_PROFILE = tuple(sorted((
    1128, 37, 276, 32, 9, 41, 18, 87, 20, 50, 11, 13, 8, 97, 19, 49, 70, 17, 7, 10, 8, 6, 7, 7, 100, 39, 189, 31,
    24, 11, 12, 8, 35, 10, 25, 21, 17, 10, 20, 460, 84, 498, 126, 207, 173, 366, 39, 35, 44, 36, 29, 25, 14, 45,
    16, 73, 585, 153, 164, 44, 624, 25, 200, 137, 70, 89, 73, 127, 91, 175, 9, 237, 119, 292, 87, 113, 15, 21, 6,
    11), reverse=True))

# 1, 2, 3, 4 objects per image: VOC-like (about 2 labels an image) for 20 classes, COCO-like
# (busier scenes, about 2.7 labels an image) from 80 classes on, interpolated in between.
OBJECT_COUNT_PROBS_FEW = (0.34, 0.34, 0.2, 0.12)
OBJECT_COUNT_PROBS_MANY = (0.05, 0.15, 0.35, 0.45)
PAIR_PROB = 0.55  # an object's partner joins it (when room is left)
REPEAT_PROB = 0.15  # an object is a second instance of a class already there


def _resample(profile: Sequence[int], n: int) -> np.ndarray:
    """``profile`` (sorted, descending) resampled to ``n`` classes in log-count space."""
    p = np.log(np.asarray(profile, dtype=np.float64))
    x_old = np.linspace(0.0, 1.0, len(p))
    x_new = np.linspace(0.0, 1.0, n)
    return np.exp(np.interp(x_new, x_old, p))


def lt_profile(num_classes: int, scale: float = 1.0) -> np.ndarray:
    """Sorted (descending) long-tailed target counts for ``num_classes`` classes.

    VOC-LT's counts for 20 classes, COCO-LT's for 80; other sizes interpolate the two curves
    in log-count space over the normalised class rank (beyond the ends, the nearer curve is
    resampled). ``scale`` multiplies every count (at least 1 image per class).
    """
    if num_classes == len(VOC_LT_PROFILE):
        prof = np.asarray(VOC_LT_PROFILE, dtype=np.float64)
    elif num_classes == len(COCO_LT_PROFILE):
        prof = np.asarray(COCO_LT_PROFILE, dtype=np.float64)
    else:
        voc = _resample(VOC_LT_PROFILE, num_classes)
        coco = _resample(COCO_LT_PROFILE, num_classes)
        t = float(np.clip((num_classes - 20) / 60.0, 0.0, 1.0))
        prof = np.exp((1 - t) * np.log(voc) + t * np.log(coco))
    out = np.maximum(1, np.round(prof * scale)).astype(np.int64)
    return np.sort(out)[::-1].copy()


@dataclass
class LabelSet:
    scene: str
    objects: list[int]  # class indices of the drawn instances (repeats allowed)

    @property
    def labels(self) -> list[int]:
        return sorted(set(self.objects))


@dataclass
class WorldSpec:
    classes: list[str]
    scenes: dict[str, list[int]]  # scene name -> class indices
    partner: dict[int, list[int]]  # class index -> partner class indices
    object_probs: tuple[float, ...]  # probabilities of 1, 2, 3, 4 objects per image


def make_spec(num_classes: int) -> WorldSpec:
    classes = select_classes(num_classes)
    index = {w: i for i, w in enumerate(classes)}
    partner: dict[int, list[int]] = {}
    for a, b in PAIRS:
        if a in index and b in index:
            partner.setdefault(index[a], []).append(index[b])
            partner.setdefault(index[b], []).append(index[a])
    t = float(np.clip((num_classes - 20) / 60.0, 0.0, 1.0))
    probs = tuple(float((1 - t) * a + t * b) for a, b in zip(OBJECT_COUNT_PROBS_FEW, OBJECT_COUNT_PROBS_MANY))
    return WorldSpec(classes, class_scenes(classes), partner, probs)


def sample_pool(spec: WorldSpec, weights: np.ndarray, size: int, rng: np.random.Generator,
                object_probs: Optional[Sequence[float]] = None) -> list[LabelSet]:
    """``size`` label sets drawn with per-class ``weights`` (any positive scale).

    ``object_probs``: probabilities of 1, 2, 3, 4 objects (default: the spec's).
    """
    c = len(spec.classes)
    weights = np.asarray(weights, dtype=np.float64)
    membership = np.zeros(c)
    for idx in spec.scenes.values():
        membership[idx] += 1
    w_eff = weights / np.maximum(membership, 1)
    names = list(spec.scenes)
    scene_idx = [list(spec.scenes[s]) for s in names]
    scene_w = np.array([w_eff[i].sum() for i in scene_idx])
    scene_p = scene_w / scene_w.sum()
    cum = [list(np.cumsum(w_eff[i]) / w_eff[i].sum()) for i in scene_idx]
    probs = np.asarray(spec.object_probs if object_probs is None else object_probs, dtype=np.float64)
    probs = probs / probs.sum()
    n_obj = rng.choice(len(probs), size=size, p=probs) + 1
    scenes = rng.choice(len(names), size=size, p=scene_p)
    draws = rng.random((size, len(probs), 3)).tolist()  # per object: kind, class, partner
    partner = {k: set(v) for k, v in spec.partner.items()}
    out = []
    for k in range(size):
        s = int(scenes[k])
        members, cp = scene_idx[s], cum[s]
        last = len(members) - 1
        d = draws[k]
        objs = [members[min(bisect.bisect_right(cp, d[0][1]), last)]]
        for j in range(1, int(n_obj[k])):
            u, uc, up = d[j]
            mates = [q for o in objs for q in partner.get(o, ()) if q not in objs and q in members]
            if mates and u < PAIR_PROB:
                objs.append(mates[int(up * len(mates))])
            elif u > 1.0 - REPEAT_PROB:
                objs.append(objs[int(up * len(objs))])
            else:
                objs.append(members[min(bisect.bisect_right(cp, uc), last)])
        out.append(LabelSet(names[s], objs))
    return out


def label_matrix(sets: Sequence[LabelSet], num_classes: int) -> np.ndarray:
    y = np.zeros((len(sets), num_classes), dtype=np.uint8)
    for i, s in enumerate(sets):
        y[i, s.labels] = 1
    return y


def greedy_select(pool_labels: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                  overshoot_penalty: float = 2.0, max_items: Optional[int] = None) -> np.ndarray:
    """Indices of pool items picked so that per-class counts approach ``target``.

    Each step takes the unused item with the highest score ``sum_c y_c g_c`` where
    ``g_c = need_c / target_c`` for classes still short of their target and
    ``-overshoot_penalty`` for full ones (ties broken at random); it stops when no class is
    short or no item would help, then goes on with a penalty
    ``overshoot_penalty * (1 + excess_c) / target_c`` that head classes barely feel.
    """
    y = pool_labels.astype(np.float64)
    y_t = np.ascontiguousarray(y.T)  # [C, M]: class rows for the incremental score updates
    target = np.asarray(target, dtype=np.float64)
    need = target.copy()
    used = np.zeros(len(y), dtype=bool)
    picked: list[int] = []
    limit = max_items if max_items is not None else len(y)
    noise = rng.random(len(y)) * 1e-6
    # Pass 1: a flat penalty for any full class. Pass 2 fills classes that only co-occur with
    # full ones, at a price that grows with the overshoot relative to the full class's target
    # (head classes absorb the extra images, tail classes barely move).
    for second in (False, True):
        def gain(need_c: np.ndarray, target_c: np.ndarray) -> np.ndarray:
            t = np.maximum(target_c, 1)
            if second:
                return np.where(need_c > 0, need_c / t, -overshoot_penalty * (1 - need_c) / t)
            return np.where(need_c > 0, need_c / t, -overshoot_penalty)

        g = gain(need, target)
        score = y @ g + noise
        score[used] = -np.inf
        while len(picked) < limit and (need > 0).any():
            i = int(np.argmax(score))
            if score[i] <= 0:
                break
            used[i] = True
            score[i] = -np.inf
            picked.append(i)
            cls = np.flatnonzero(y[i])
            need[cls] -= 1
            g_new = gain(need[cls], target[cls])
            score += (g_new - g[cls]) @ y_t[cls]
            g[cls] = g_new
    return np.asarray(picked, dtype=np.int64)


def sample_split(spec: WorldSpec, target: np.ndarray, rng: np.random.Generator, pool_factor: float = 12.0,
                 weights: Optional[np.ndarray] = None) -> list[LabelSet]:
    """Label sets of one split whose per-class image counts approach ``target``.

    The pool is drawn with class weights ``weights`` (default: the targets themselves) and is
    ``pool_factor`` times as large as the expected number of images.
    """
    target = np.asarray(target, dtype=np.int64)
    w = np.asarray(target if weights is None else weights, dtype=np.float64)
    expected = target.sum() / 2.0
    pool = sample_pool(spec, np.maximum(w, 1e-3), int(max(200, pool_factor * expected)), rng)
    y = label_matrix(pool, len(spec.classes))
    picked = greedy_select(y, target, rng)
    picked = picked[rng.permutation(len(picked))]
    return [pool[i] for i in picked]


def sample_balanced(spec: WorldSpec, size: int, rng: np.random.Generator,
                    object_probs: Optional[Sequence[float]] = None) -> list[LabelSet]:
    """``size`` label sets with (about) equal class weights: for val, test and pretraining."""
    return sample_pool(spec, np.ones(len(spec.classes)), size, rng, object_probs)
