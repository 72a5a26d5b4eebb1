"""Drawing the generated world's images: each class has a look, each image a scene.

A class's *look* is a shape, a colour, a surface texture, a typical size, a typical height in
the picture and whether it stands upright. Looks are assigned per class list (independent of
the world's seed), so that any two classes share at most one of shape, colour and texture:
distinct, but not separable by a single cue. Every drawn instance
varies: hue, saturation and brightness jitter, size, rotation, position, partial occlusion by
other objects, clutter (small shapes and lines in muted colours), a scene background with a
horizon and low-frequency noise, lighting and pixel noise.

Images are drawn at twice the output size and reduced with a box filter (anti-aliasing).
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .vocab import SCENES, Scene, pool_words

__all__ = ["IMAGE_SIZE", "ClassLook", "COLOURS", "SHAPES", "TEXTURES", "assign_looks", "render_image"]

IMAGE_SIZE = 64
_SS = 2  # supersampling factor

# name -> (hue degrees, saturation, value)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0, 0.85, 0.85), "orange": (28, 0.9, 0.95), "yellow": (54, 0.85, 0.95), "green": (120, 0.7, 0.65),
    "lime": (88, 0.75, 0.85), "teal": (172, 0.75, 0.65), "blue": (220, 0.8, 0.85), "purple": (275, 0.6, 0.7),
    "pink": (325, 0.5, 0.95), "brown": (25, 0.65, 0.45), "white": (0, 0.0, 0.97), "grey": (0, 0.0, 0.55),
    "black": (0, 0.0, 0.12),
}

SHAPES = ("circle", "oval", "square", "bar", "slab", "triangle", "diamond", "star", "cross", "hexagon", "ring",
          "crescent", "heart", "arrow", "trapezoid", "semicircle")
TEXTURES = ("plain", "striped", "dotted", "checked", "hollow", "two-tone", "ringed", "speckled", "gradient",
            "bullseye")


@dataclass(frozen=True)
class ClassLook:
    shape: str
    colour: str
    texture: str
    accent: str  # "dark", "light" or a colour name: the second colour of the texture
    size: float  # typical radius in output pixels
    height: float  # typical centre height, fraction of the image (0 top, 1 bottom)
    upright: bool  # rotates a little (True) or any way (False)


def _circle(n: int = 28, sx: float = 1.0, sy: float = 1.0, a0: float = 0.0, a1: float = 2 * math.pi):
    return [(sx * math.cos(a0 + (a1 - a0) * i / n), sy * math.sin(a0 + (a1 - a0) * i / n)) for i in range(n + 1)]


def _regular(k: int, r: float = 1.0, phase: float = -math.pi / 2):
    return [(r * math.cos(phase + 2 * math.pi * i / k), r * math.sin(phase + 2 * math.pi * i / k)) for i in range(k)]


def _star(k: int = 5, r0: float = 1.05, r1: float = 0.45):
    pts = []
    for i in range(2 * k):
        r = r0 if i % 2 == 0 else r1
        a = -math.pi / 2 + math.pi * i / k
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _heart(n: int = 30):
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((x / 16.5, (y + 2.5) / 16.5))
    return pts


# shape -> list of (polygon in unit coordinates, fill): later polygons paint over earlier ones.
_SHAPE_POLYS: dict[str, list[tuple[list[tuple[float, float]], int]]] = {
    "circle": [(_circle(), 255)],
    "oval": [(_circle(sx=1.15, sy=0.62), 255)],
    "square": [([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)], 255)],
    "bar": [([(-0.42, -1.1), (0.42, -1.1), (0.42, 1.1), (-0.42, 1.1)], 255)],
    "slab": [([(-1.15, -0.5), (1.15, -0.5), (1.15, 0.5), (-1.15, 0.5)], 255)],
    "triangle": [(_regular(3, 1.1, -math.pi / 2), 255)],
    "diamond": [([(0, -1.1), (0.72, 0), (0, 1.1), (-0.72, 0)], 255)],
    "star": [(_star(), 255)],
    "cross": [([(-0.33, -1), (0.33, -1), (0.33, -0.33), (1, -0.33), (1, 0.33), (0.33, 0.33), (0.33, 1),
                (-0.33, 1), (-0.33, 0.33), (-1, 0.33), (-1, -0.33), (-0.33, -0.33)], 255)],
    "hexagon": [(_regular(6, 1.0, 0.0), 255)],
    "ring": [(_circle(), 255), (_circle(sx=0.55, sy=0.55), 0)],
    "crescent": [(_circle(), 255), ([(x + 0.45, y - 0.2) for x, y in _circle(sx=0.85, sy=0.85)], 0)],
    "heart": [(_heart(), 255)],
    "arrow": [([(-1.05, -0.28), (0.15, -0.28), (0.15, -0.7), (1.05, 0), (0.15, 0.7), (0.15, 0.28),
                (-1.05, 0.28)], 255)],
    "trapezoid": [([(-0.5, -0.75), (0.5, -0.75), (1.05, 0.75), (-1.05, 0.75)], 255)],
    "semicircle": [(_circle(a0=math.pi, a1=2 * math.pi, sx=1.1, sy=1.1) + [(1.1, 0.35), (-1.1, 0.35)], 255)],
}
_HOLLOW_SCALE = 0.55
_LOOK_SEED = 20230508  # fixed: a word looks the same in every world


def assign_looks(words: Optional[Sequence[str]] = None) -> dict[str, ClassLook]:
    """One look per class word (default: the whole vocabulary), assigned in the given order.

    Colours are spread as evenly as possible over the classes (a 20-class world uses each of
    the 13 colours once or twice), then shapes and textures; any two classes share at most one
    of (shape, colour, texture). The assignment depends only on the word list (fixed random
    stream), not on a world's seed.
    """
    words = list(pool_words() if words is None else words)
    rng = np.random.default_rng(_LOOK_SEED)
    colours = list(COLOURS)
    sky = set(next(s for s in SCENES if s.name == "sky").words)
    # all (shape, colour, texture) index triples
    combos = np.stack(np.meshgrid(np.arange(len(SHAPES)), np.arange(len(colours)), np.arange(len(TEXTURES)),
                                  indexing="ij"), -1).reshape(-1, 3)
    clashes = np.zeros(len(combos), np.int64)  # classes sharing two or more attributes with a combo
    use = [np.zeros(len(SHAPES), np.int64), np.zeros(len(colours), np.int64), np.zeros(len(TEXTURES), np.int64)]
    looks: dict[str, ClassLook] = {}
    for word in words:
        cost = (clashes * 10**9 + use[1][combos[:, 1]] * 10**6 + use[0][combos[:, 0]] * 10**3
                + use[2][combos[:, 2]])
        order = rng.permutation(len(combos))
        pick = combos[order[int(np.argmin(cost[order]))]]
        clashes += (combos == pick[None]).sum(1) >= 2
        for k in range(3):
            use[k][pick[k]] += 1
        shape, colour, texture = SHAPES[pick[0]], colours[pick[1]], TEXTURES[pick[2]]
        accent = ("dark", "light", colours[rng.integers(len(colours))])[rng.integers(3)]
        if accent == colour:
            accent = "dark"
        if word == "person":
            size, height, upright = 11.0, 0.55, True
        else:
            size = float(rng.uniform(8.5, 13.5))
            height = float(rng.uniform(0.2, 0.45)) if word in sky else float(rng.uniform(0.4, 0.78))
            upright = bool(rng.random() < 0.5)
        looks[word] = ClassLook(shape, colour, texture, accent, size, height, upright)
    return looks


def _hsv_rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h % 360) / 360.0, min(max(s, 0), 1), min(max(v, 0), 1)),
                    dtype=np.float32) * np.float32(255.0)


def _instance_colour(name: str, rng: np.random.Generator) -> np.ndarray:
    h, s, v = COLOURS[name]
    return _hsv_rgb(h + rng.normal(0, 7), s * rng.uniform(0.8, 1.1), v * rng.uniform(0.8, 1.12))


def _accent_colour(look: ClassLook, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if look.accent == "dark":
        return base * np.float32(0.45)
    if look.accent == "light":
        return base * np.float32(0.35) + np.float32(0.65 * 255.0)
    return _instance_colour(look.accent, rng)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, amp: float) -> np.ndarray:
    small = rng.normal(0.0, amp, (cells, cells, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(small + 128, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) - 128.0


def _background(scene: Scene, rng: np.random.Generator, size: int) -> np.ndarray:
    top = np.asarray(scene.top, np.float32) + rng.normal(0, 14, 3)
    bottom = np.asarray(scene.bottom, np.float32) + rng.normal(0, 14, 3)
    horizon = scene.horizon + rng.normal(0, 0.06)
    y = (np.arange(size, dtype=np.float32) + 0.5) / size
    w = 1.0 / (1.0 + np.exp(-(y - horizon) / 0.025))  # 0 above the horizon, 1 below
    shade = 0.88 + 0.24 * y
    col = (top[None] * (1 - w[:, None]) + bottom[None] * w[:, None]) * shade[:, None]
    return col.astype(np.float32)[:, None, :] + _smooth_noise(rng, size, 5, 14.0)


def _draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    for _ in range(int(rng.integers(0, 5))):
        shape = SHAPES[rng.integers(len(SHAPES))]
        r = rng.uniform(2.0, 4.5) * _SS
        cx, cy = rng.uniform(0, size, 2)
        a = rng.uniform(0, 2 * math.pi)
        ca, sa = math.cos(a), math.sin(a)
        col = tuple(int(c) for c in _hsv_rgb(rng.uniform(0, 360), rng.uniform(0, 0.35), rng.uniform(0.25, 0.9)))
        poly = _SHAPE_POLYS[shape][0][0]
        draw.polygon([(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in poly], fill=col)
    for _ in range(int(rng.integers(0, 4))):
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        col = tuple(int(c) for c in _hsv_rgb(rng.uniform(0, 360), rng.uniform(0, 0.3), rng.uniform(0.2, 0.85)))
        draw.line([(x0, y0), (x1, y1)], fill=col, width=int(rng.integers(1, 4)))


def _object_patch(look: ClassLook, r: float, angle: float, rng: np.random.Generator):
    """RGB patch and alpha mask of one instance, centred in an ``L x L`` box."""
    L = int(math.ceil(2.6 * r)) + 2
    c = L / 2.0
    ca, sa = math.cos(angle), math.sin(angle)

    def tf(poly, scale=1.0):
        return [(c + r * scale * (x * ca - y * sa), c + r * scale * (x * sa + y * ca)) for x, y in poly]

    mask = Image.new("L", (L, L), 0)
    d = ImageDraw.Draw(mask)
    for poly, fill in _SHAPE_POLYS[look.shape]:
        d.polygon(tf(poly), fill=fill)
    alpha = np.asarray(mask, dtype=np.uint8).copy()
    if look.texture == "hollow":
        inner = Image.new("L", (L, L), 0)
        di = ImageDraw.Draw(inner)
        for poly, fill in _SHAPE_POLYS[look.shape]:
            di.polygon(tf(poly, _HOLLOW_SCALE), fill=fill)
        alpha[np.asarray(inner) > 0] = 0

    # object-frame coordinates in units of r (broadcast: rows y, columns x)
    g = (np.arange(L, dtype=np.float32) + (0.5 - c)) / np.float32(r)
    gx, gy = g[None, :], g[:, None]
    ca32, sa32 = np.float32(ca), np.float32(sa)
    u = gx * ca32 + gy * sa32
    v = gy * ca32 - gx * sa32
    base = _instance_colour(look.colour, rng)
    accent = _accent_colour(look, base, rng)
    tex = look.texture
    if tex == "striped":
        t = (np.floor(u / 0.36) % 2).astype(np.float32)
    elif tex == "dotted":
        p = 0.55
        t = (((np.mod(u, p) - p / 2) ** 2 + (np.mod(v, p) - p / 2) ** 2) < (0.16 ** 2)).astype(np.float32)
    elif tex == "checked":
        t = ((np.floor(u / 0.5) + np.floor(v / 0.5)) % 2).astype(np.float32)
    elif tex == "two-tone":
        t = (v > 0.05).astype(np.float32)
    elif tex == "ringed":
        t = (np.floor(np.sqrt(u * u + v * v) / 0.3) % 2).astype(np.float32)
    elif tex == "speckled":
        t = (rng.random(u.shape, dtype=np.float32) < 0.3).astype(np.float32)
    elif tex == "bullseye":
        t = (u * u + v * v < 0.4 ** 2).astype(np.float32)
    elif tex == "gradient":
        t = np.clip((v + 1.0) * 0.5, 0.0, 1.0)
    else:  # plain, hollow
        t = None
    light = (1.0 - (0.16 / 1.4) * (gx + gy))[..., None]  # lit from the top left
    if t is None:
        rgb = light * base
    else:
        rgb = light * (base + t[..., None] * (accent - base))
    np.clip(rgb, 0, 255, out=rgb)
    return rgb.astype(np.uint8), alpha, L


def render_image(looks: dict[str, ClassLook], scene: Scene, objects: Sequence[str],
                 rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Draw one image: ``objects`` (class words, repeats allowed) in ``scene``.

    Returns the ``[64, 64, 3]`` uint8 image and one record per instance (``word``,
    ``area`` in output pixels, ``colour``), in drawing order (larger first, so smaller ones may
    hide parts of larger ones).
    """
    S = IMAGE_SIZE * _SS
    img = _background(scene, rng, S)
    np.clip(img, 0, 255, out=img)
    pil = Image.fromarray(img.astype(np.uint8))
    _draw_clutter(ImageDraw.Draw(pil), rng, S)

    inst = []
    for word in objects:
        look = looks[word]
        r = look.size * rng.uniform(0.78, 1.25) * _SS
        inst.append((r, word, look))
    inst.sort(key=lambda t: -t[0])
    placed: list[tuple[float, float, float]] = []
    records = []
    for r, word, look in inst:
        angle = rng.uniform(-0.3, 0.3) if look.upright else rng.uniform(0, 2 * math.pi)
        best = None
        for _ in range(6):
            cx = rng.uniform(0.55 * r, S - 0.55 * r)
            cy = float(np.clip(rng.normal(look.height * S, 0.13 * S), 0.55 * r, S - 0.55 * r))
            # worst overlap with an already placed object, as a fraction of the smaller radius
            ov = max((max(0.0, (r + r2) - math.hypot(cx - x2, cy - y2)) / min(r, r2) for x2, y2, r2 in placed),
                     default=0.0)
            if best is None or ov < best[0]:
                best = (ov, cx, cy)
            if ov < 0.7:
                break
        _, cx, cy = best
        placed.append((cx, cy, r))
        rgb, alpha, L = _object_patch(look, r, angle, rng)
        x0, y0 = int(round(cx - L / 2)), int(round(cy - L / 2))
        pil.paste(Image.fromarray(rgb), (x0, y0), Image.fromarray(alpha))
        records.append({"word": word, "area": float(math.pi * (r / _SS) ** 2), "colour": look.colour,
                        "texture": look.texture, "shape": look.shape})

    out = np.asarray(pil.reduce(_SS), dtype=np.float32)
    gain = rng.uniform(0.85, 1.15)
    mean = out.mean()
    contrast = rng.uniform(0.8, 1.15)
    out *= contrast
    out += mean * (gain - contrast) + rng.uniform(-10, 10) + 0.5
    out += rng.standard_normal(out.shape, dtype=np.float32) * rng.uniform(2.0, 7.0)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8), records
