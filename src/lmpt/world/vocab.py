"""The generated world's vocabulary: scenes, class words, plurals and co-occurring pairs.

Every class word is a common English noun that the CLIP BPE tokenizer encodes as one token
(at most two allowed; checked by the tests). Classes belong to scenes (a dog to the park, a cup
to the kitchen); ``person`` belongs to every scene, as in VOC. A few pairs usually appear
together (cup and spoon, dog and ball, sun and cloud). Place phrases never contain a class
word, so a caption cannot name an absent class by accident.

Which classes a world of ``N`` classes uses is fixed by ``N`` (see :func:`select_classes`);
the seed decides which of them are head, medium or tail.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["Scene", "SCENES", "PERSON", "PLURALS", "PAIRS", "plural", "pool_words", "num_scenes_for",
           "select_classes", "class_scenes"]


@dataclass(frozen=True)
class Scene:
    name: str
    places: tuple[str, ...]  # "in a kitchen": where-phrases for captions
    surfaces: tuple[str, ...]  # "on the grass": what things stand on
    top: tuple[int, int, int]  # background colour above the horizon (RGB)
    bottom: tuple[int, int, int]  # background colour below the horizon
    horizon: float  # horizon height as a fraction of the image (0 top, 1 bottom)
    words: tuple[str, ...]  # class words, most typical first


# Order matters: a world with few classes uses the first scenes and the first words of each.
SCENES: tuple[Scene, ...] = (
    Scene("street", ("on a street", "in the city", "on the road", "downtown"), ("on the road", "on the pavement"),
          (150, 160, 175), (85, 85, 90), 0.45,
          ("car", "bus", "bicycle", "truck", "sign", "taxi", "van", "cone", "motorbike", "mailbox")),
    Scene("living room", ("in a living room", "in a room", "at home", "indoors"), ("on the floor", "on the carpet"),
          (205, 185, 150), (120, 80, 60), 0.6,
          ("sofa", "chair", "television", "table", "clock", "book", "vase", "pillow", "cat", "candle")),
    Scene("farm", ("on a farm", "in a field", "in the countryside", "near the stables"),
          ("in the field", "on the grass"),
          (170, 200, 230), (150, 170, 80), 0.4,
          ("horse", "cow", "sheep", "pig", "goat", "chicken", "duck", "tractor", "barn", "fence")),
    Scene("kitchen", ("in a kitchen", "at a kitchen counter", "in the kitchen", "at breakfast"),
          ("on the counter", "on a tray"),
          (225, 220, 200), (160, 120, 80), 0.55,
          ("cup", "bottle", "plate", "bowl", "spoon", "fork", "knife", "kettle", "bread", "apple")),
    Scene("park", ("in a park", "in the park", "outdoors", "on a sunny day"), ("on the grass", "on the lawn"),
          (160, 205, 235), (90, 160, 70), 0.5,
          ("dog", "tree", "ball", "bench", "kite", "bird", "frisbee", "squirrel", "swing", "fountain")),
    Scene("sky", ("in the sky", "in the air", "high above", "over the clouds"), ("in the sky", "in the air"),
          (70, 120, 200), (160, 195, 235), 0.85,
          ("plane", "cloud", "sun", "moon", "balloon", "helicopter", "star", "rocket", "parachute", "eagle")),
    Scene("beach", ("on the beach", "by the sea", "at the seaside", "on the shore"), ("on the sand", "on the beach"),
          (120, 180, 225), (215, 195, 140), 0.5,
          ("boat", "umbrella", "fish", "crab", "shell", "towel", "bucket", "seagull", "starfish", "surfboard")),
    Scene("office", ("in an office", "at work", "at the workplace", "in a study"), ("on a shelf", "on the worktop"),
          (200, 205, 210), (140, 110, 85), 0.55,
          ("laptop", "keyboard", "phone", "mouse", "monitor", "notebook", "pen", "scissors", "printer", "desk")),
    Scene("forest", ("in the forest", "in the woods", "among the pines", "in the wild"),
          ("on the ground", "on the moss"),
          (60, 100, 60), (95, 75, 50), 0.6,
          ("bear", "deer", "fox", "owl", "rabbit", "mushroom", "wolf", "frog", "log", "snail")),
    Scene("garden", ("in a garden", "in the yard", "in the backyard", "among flowers"), ("on the soil", "on the path"),
          (175, 210, 160), (120, 90, 60), 0.55,
          ("sunflower", "butterfly", "bee", "rose", "tulip", "pot", "hose", "ladder", "shovel", "hedgehog")),
)

PERSON = "person"

PLURALS = {
    "person": "people", "bus": "buses", "taxi": "taxis", "bench": "benches", "sheep": "sheep", "fish": "fish",
    "deer": "deer", "knife": "knives", "wolf": "wolves", "butterfly": "butterflies", "box": "boxes",
    "scissors": "scissors", "mouse": "mice", "shelf": "shelves", "squirrel": "squirrels", "frisbee": "frisbees",
    "candle": "candles", "bush": "bushes",
}

# Pairs that usually appear together (when both are classes of the world).
PAIRS: tuple[tuple[str, str], ...] = (
    ("cup", "spoon"), ("plate", "fork"), ("bread", "knife"), ("bowl", "apple"), ("bottle", "kettle"),
    ("dog", "ball"), ("tree", "bench"), ("kite", "bird"), ("squirrel", "frisbee"), ("swing", "fountain"),
    ("car", "bus"), ("bicycle", "person"), ("truck", "cone"), ("sign", "taxi"), ("van", "mailbox"),
    ("horse", "person"), ("cow", "barn"), ("sheep", "fence"), ("pig", "goat"), ("chicken", "duck"),
    ("sofa", "pillow"), ("chair", "table"), ("television", "clock"), ("book", "candle"), ("vase", "cat"),
    ("sun", "cloud"), ("moon", "star"), ("plane", "helicopter"), ("balloon", "parachute"), ("rocket", "eagle"),
    ("umbrella", "towel"), ("boat", "seagull"), ("crab", "shell"), ("fish", "starfish"), ("surfboard", "person"),
    ("laptop", "mouse"), ("keyboard", "monitor"), ("phone", "notebook"), ("pen", "scissors"), ("printer", "desk"),
    ("bear", "log"), ("fox", "rabbit"), ("owl", "mushroom"), ("frog", "snail"), ("deer", "wolf"),
    ("bee", "sunflower"), ("butterfly", "rose"), ("tulip", "pot"), ("hose", "hedgehog"), ("ladder", "shovel"),
)


def plural(word: str) -> str:
    return PLURALS.get(word, word + "s")


def pool_words() -> list[str]:
    """All class words of the vocabulary (``person`` first), without repeats."""
    out = [PERSON]
    for scene in SCENES:
        for w in scene.words:
            if w not in out:
                out.append(w)
    return out


def num_scenes_for(num_classes: int) -> int:
    """Scenes a world of ``num_classes`` classes uses: about 5 classes per scene, 2 to 10 scenes."""
    return max(2, min(len(SCENES), round(num_classes / 5)))


def select_classes(num_classes: int) -> list[str]:
    """The class words of a world with ``num_classes`` classes (``person`` first).

    Round robin over the first :func:`num_scenes_for` scenes; once those run out of words, the
    remaining scenes are used too.
    """
    total = len(pool_words())
    if not 2 <= num_classes <= total:
        raise ConfigError(f"a world has between 2 and {total} classes (its vocabulary), got {num_classes}")
    out = [PERSON]
    k = num_scenes_for(num_classes)
    for active in (SCENES[:k], SCENES):
        depth = 0
        while len(out) < num_classes and depth < max(len(s.words) for s in active):
            for scene in active:
                if depth < len(scene.words) and scene.words[depth] not in out and len(out) < num_classes:
                    out.append(scene.words[depth])
            depth += 1
        if len(out) >= num_classes:
            break
    return out


def class_scenes(classes: list[str]) -> dict[str, list[int]]:
    """Scene name -> class indices, for the scenes that hold at least one of ``classes``.

    ``person`` is in every such scene.
    """
    out: dict[str, list[int]] = {}
    for scene in SCENES:
        idx = [classes.index(w) for w in scene.words if w in classes]
        if idx:
            if PERSON in classes:
                idx = [classes.index(PERSON)] + idx
            out[scene.name] = idx
    return out
