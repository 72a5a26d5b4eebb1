"""Machine-captioner-like captions for the generated world's images.

A caption names some of the image's classes (the most salient first; all of them a bit less
than half of the time when there are several), with counts ("two dogs"), sometimes a colour or
texture word, and a phrasing drawn from a few dozen templates, sometimes with a place from the
scene ("in a kitchen"). It never names a class that is not in the image. Captions stay within
75 characters (the method cuts captions there) by dropping the place phrase or the least
salient names.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .vocab import SCENES, plural, pool_words

__all__ = ["MAX_CAPTION_CHARS", "make_caption"]

MAX_CAPTION_CHARS = 75

_SCENES = {s.name: s for s in SCENES}
_VOCAB = {w for w in pool_words()} | {plural(w) for w in pool_words()}


def _clean(phrases: Sequence[str]) -> tuple[str, ...]:
    """Place phrases that name no class word (a caption must never name an absent class)."""
    return tuple(p for p in phrases if not (set(p.split()) & _VOCAB)) or ("here",)
_NUMBERS = {2: "two", 3: "three", 4: "four"}
_TEXTURE_WORDS = {"striped": "striped", "dotted": "dotted", "checked": "checkered", "speckled": "speckled",
                  "two-tone": "two-tone"}
_SIZE_WORDS = ("small", "large", "big", "little")

_SOLO = (
    "{a}", "{a} {place}", "a photo of {a}", "a picture of {a} {place}", "an image of {a}", "close up of {a}",
    "there is {a} {place}", "{a} {surface}", "{a} sitting {surface}", "a view of {a} {place}",
    "{a} on display", "a blurry photo of {a}", "{scene_a} with {a}",
)
_DUO = (
    "{a} and {b}", "{a} next to {b}", "{a} near {b} {place}", "{a} beside {b}", "{a} and {b} {place}",
    "{a} in front of {b}", "{a} behind {b}", "{a} with {b} {surface}", "{scene_a} with {a} and {b}",
    "a picture of {a} and {b}", "there is {a} next to {b}",
)
_MANY = ("{list}", "{list} {place}", "{scene_a} with {list}", "a photo of {list}", "a scene with {list}")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


_GENERIC = ("thing", "object", "item", "shape")


def _noun_phrase(word: str, count: int, colour: str, texture: str, rng: np.random.Generator,
                 generic: bool = False, shape: str = "") -> str:
    if generic:  # the captioner does not know the name: "a red star", "a striped thing"
        noun = shape if shape and rng.random() < 0.7 else _GENERIC[rng.integers(len(_GENERIC))]
        adj = colour if rng.random() < 0.6 else (_TEXTURE_WORDS.get(texture, "") if rng.random() < 0.5 else "")
        if count >= 2:
            return f"{_NUMBERS.get(count, 'some')} {adj + ' ' if adj else ''}{noun}s"
        phrase = f"{adj} {noun}" if adj else noun
        return f"{_article(phrase)} {phrase}"
    if count >= 2:
        num = _NUMBERS.get(count, "some") if rng.random() < 0.8 else "some"
        adj = f"{colour} " if rng.random() < 0.2 else ""
        return f"{num} {adj}{plural(word)}"
    u = rng.random()
    if u < 0.3:
        adj = colour
    elif u < 0.42 and texture in _TEXTURE_WORDS:
        adj = _TEXTURE_WORDS[texture]
    elif u < 0.5:
        adj = _SIZE_WORDS[rng.integers(len(_SIZE_WORDS))]
    else:
        adj = ""
    phrase = f"{adj} {word}" if adj else word
    return f"{_article(phrase)} {phrase}"


def _join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


_WEB_WORDS = ("image", "photo", "picture", "stock", "free", "download", "hd", "high", "resolution", "wallpaper",
              "jpg", "img", "view", "close", "up", "shot", "new", "best", "cute", "my", "our", "random", "camera",
              "daily", "post", "gallery", "file", "original", "size", "from", "the", "of", "with", "and", "this",
              "is", "taken", "by", "2019", "2021", "via", "blog", "album", "edit", "vintage", "cool", "nice")
_WEB_SEPARATORS = (" ", " - ", ": ", " | ", ", ")


def web_prefix(rng: np.random.Generator, max_words: int = 18) -> str:
    """Alt-text clutter before the description ("free hd stock photo 2019 - ..."), 2..max_words words.

    Web captions often put the thing named after a run of unrelated words. Training the text encoder on
    such captions teaches it to read a name that comes late in the sequence, as a prompt with 16 learned
    context tokens puts it (the class name sits at position 17 and beyond).
    """
    n = int(rng.integers(2, max_words + 1))
    words = [_WEB_WORDS[i] for i in rng.integers(len(_WEB_WORDS), size=n)]
    return " ".join(words) + _WEB_SEPARATORS[rng.integers(len(_WEB_SEPARATORS))]


def make_caption(records: Sequence[dict], scene: str, rng: np.random.Generator,
                 naming: Optional[dict[str, float]] = None,
                 confusion: Optional[dict[str, tuple[str, float]]] = None,
                 hallucinate: Sequence[str] = ()) -> str:
    """A caption for an image whose instances are ``records`` (``word``, ``area``, ``colour``,
    ``texture``; see :func:`~lmpt.world.render.render_image`) in scene ``scene``.

    ``naming`` (word -> probability, default 1) models a web-like captioner that does not always
    know a thing's name: an object it fails to name is either left out of the caption or called
    "a thing", "an object", ... (with its colour or texture). The downstream train captions use
    the default (every mentioned object by its name); the pretraining corpus uses per-class
    naming rates.

    ``confusion`` (word -> (other word, probability)) models a captioner that mixes up similar
    things: a named object is called by the other word with that probability (pretraining
    corpus only). ``hallucinate``: words of absent things the caption names anyway (a web
    caption describing context: the spoon that usually goes with the cup). Name noise of these
    kinds is what keeps the small CLIP's zero-shot recognition imperfect while its image
    features stay informative, as with web captions.
    """
    sc = _SCENES[scene]
    # classes by salience: total visible area, with a random tilt
    info: dict[str, dict] = {}
    for r in records:
        d = info.setdefault(r["word"], {"count": 0, "area": 0.0, "colour": r["colour"], "texture": r["texture"],
                                        "shape": r.get("shape", "")})
        d["count"] += 1
        d["area"] += r["area"]
    words = sorted(info, key=lambda w: -info[w]["area"] * rng.uniform(0.6, 1.4))
    n = len(words)
    if n == 1 or rng.random() < 0.45:
        k = n
    else:
        k = int(rng.integers(1, n))  # 1 .. n-1: leave some out
    k = min(k, 3)
    chosen = words[:k]
    phrases = []
    for w in chosen:
        known = naming is None or rng.random() < naming.get(w, 1.0)
        if not known and rng.random() < 0.5 and len(chosen) > 1:
            continue  # left out
        name = w
        if known and confusion and w in confusion and rng.random() < confusion[w][1]:
            name = confusion[w][0]
        phrases.append(_noun_phrase(name, info[w]["count"], info[w]["colour"], info[w]["texture"], rng,
                                    generic=not known, shape=info[w]["shape"]))
    for w in hallucinate:
        if len(phrases) < 3:
            phrases.insert(int(rng.integers(len(phrases) + 1)), _noun_phrase(w, 1, "", "", rng))
    if not phrases:
        w = chosen[0]
        phrases.append(_noun_phrase(w, info[w]["count"], info[w]["colour"], info[w]["texture"], rng, generic=True,
                                    shape=info[w]["shape"]))
    scene_word = sc.name
    places, surfaces = _clean(sc.places), _clean(sc.surfaces)
    fields = {
        "place": places[rng.integers(len(places))],
        "surface": surfaces[rng.integers(len(surfaces))],
        "scene_a": f"{_article(scene_word)} {scene_word}",
    }
    while True:
        if len(phrases) == 1:
            tmpl = _SOLO[rng.integers(len(_SOLO))]
            text = tmpl.format(a=phrases[0], **fields)
        elif len(phrases) == 2:
            tmpl = _DUO[rng.integers(len(_DUO))]
            text = tmpl.format(a=phrases[0], b=phrases[1], **fields)
        else:
            tmpl = _MANY[rng.integers(len(_MANY))]
            text = tmpl.format(list=_join(phrases), **fields)
        if len(text) + 1 <= MAX_CAPTION_CHARS:
            break
        if len(phrases) > 1:
            phrases = phrases[:-1]
        else:  # a single phrase that is still too long: no template frills
            text = phrases[0]
            break
    if rng.random() < 0.5:
        text += "."
    return text
