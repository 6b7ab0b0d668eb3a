"""A miniature image world with known full descriptions and web-like noisy alt-text.

Each scene has one large "dominant" object (shape, colour, texture pattern, position) and 0-3
small objects of one other kind (a count), on one of several backgrounds. Its full description
names all of it; its web alt-text is what a web page would say: short, partial (one object), and
sometimes wrong (`AltTextRates`). Evaluation scenes use (colour, shape, background) combinations
of the dominant object that no training scene has, so a model that memorised scenes cannot pass.

    scenes = make_scenes(100, seed=0, split="web")
    image = render(scenes[0], 56); scenes[0].description(); alt_text(scenes[0], rng, AltTextRates())

`recap_jax.reproduce` writes these as the inputs the real commands read (webdataset tars,
TFDS folders); see docs/mini_paper.md.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 215), "yellow": (240, 215, 20),
    "black": (15, 15, 15), "white": (250, 250, 250), "orange": (245, 135, 20), "purple": (135, 40, 170),
    "pink": (245, 120, 190),
}
SHAPES = ("circle", "square", "triangle", "star")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grass": (120, 175, 95), "sky": (160, 205, 240), "snow": (228, 232, 240), "beach": (225, 205, 150),
    "road": (125, 125, 130), "water": (45, 95, 150),
}
PATTERNS = ("plain", "striped", "dotted")
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.35, 0.5), "right": (0.65, 0.5), "top": (0.5, 0.35), "bottom": (0.5, 0.65), "center": (0.5, 0.5)}
COUNT_WORDS = ("one", "two", "three")
UNRELATED = ("click here to buy now", "free shipping on all orders", "my holiday photo", "image 2041",
             "best deals of the year", "view more photos", "a dog on the beach", "city street at night")
# The combinations (dominant colour, shape, background) held out of every training split.
TRIPLES = tuple(itertools.product(COLOURS, SHAPES, BACKGROUNDS))


@dataclasses.dataclass(frozen=True)
class AltTextRates:
    """How web alt-text is corrupted; defaults give ~4-word captions, DataComp-like in spirit."""
    unrelated: float = 0.10  # text unrelated to the image (spam, file names)
    wrong_colour: float = 0.20  # the mentioned object's colour is wrong
    no_colour: float = 0.15  # the colour is left out
    other_object: float = 0.30  # scenes with small objects: mention those instead of the main one


@dataclasses.dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    pattern: str
    position: str
    background: str
    small_colour: str
    small_shape: str
    small_count: int  # 0-3 small objects besides the dominant one
    seed: int  # rendering jitter

    @property
    def label(self) -> str:
        """The zero-shot class: the dominant object's colour and shape."""
        return f"{self.colour} {self.shape}"

    def description(self) -> str:
        """The full description (the HQ caption a perfect captioner would write)."""
        pattern = "" if self.pattern == "plain" else f" {self.pattern}"
        text = f"a large {self.colour}{pattern} {self.shape} at the {self.position}"
        if self.small_count:
            noun = self.small_shape if self.small_count == 1 else PLURALS[self.small_shape]
            text += f" and {COUNT_WORDS[self.small_count - 1]} small {self.small_colour} {noun}"
        return text + f" on a {self.background} background"


def held_out_triples(seed: int = 12345, share: float = 0.2) -> frozenset[tuple[str, str, str]]:
    """(colour, shape, background) of the dominant object reserved for evaluation."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(TRIPLES), size=int(round(share * len(TRIPLES))), replace=False)
    return frozenset(TRIPLES[i] for i in chosen)


def _contrasts(colour: str, background: str) -> bool:
    return float(np.abs(np.subtract(COLOURS[colour], BACKGROUNDS[background])).sum()) > 150


def make_scenes(num: int, seed: int, split: str) -> list[Scene]:
    """`num` scenes; split "eval" draws held-out triples, any other split the rest."""
    held = held_out_triples()
    allowed = [t for t in TRIPLES if (t in held) == (split == "eval") and _contrasts(t[0], t[2])]
    rng = np.random.default_rng([seed, sum(map(ord, split))])
    scenes = []
    for i in range(num):
        colour, shape, background = allowed[rng.integers(len(allowed))]
        small_count = int(rng.integers(0, 4))
        small_colour = str(rng.choice([c for c in COLOURS if c != colour and _contrasts(c, background)]))
        small_shape = str(rng.choice(SHAPES))
        scenes.append(Scene(colour, shape, str(rng.choice(PATTERNS)), str(rng.choice(list(POSITIONS))),
                            background, small_colour, small_shape, small_count,
                            int(rng.integers(2**31))))
    return scenes


def _shape_mask(size: int, shape: str, cx: float, cy: float, r: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=255)
    else:
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        draw.polygon([(cx + q * np.cos(a), cy - q * np.sin(a)) for a, q in zip(angles, radii)], fill=255)
    return mask


def _fill(size: int, colour: str, pattern: str, rng: np.random.Generator) -> Image.Image:
    base = np.array(COLOURS[colour], np.float32) + rng.integers(-12, 13, size=3)
    pixels = np.broadcast_to(base, (size, size, 3)).copy()
    # Stripes and dots are a darker (or, on dark colours, lighter) shade of the same colour.
    shade = base * 0.45 if base.mean() > 90 else np.minimum(base + 120, 255)
    yy, xx = np.mgrid[0:size, 0:size]
    period = max(4, size // 10)
    if pattern == "striped":
        pixels[(yy // (period // 2)) % 2 == 0] = shade
    elif pattern == "dotted":
        pixels[((yy % period) - period / 2) ** 2 + ((xx % period) - period / 2) ** 2 <= (period / 4) ** 2 + 1] = shade
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def render(scene: Scene, size: int) -> Image.Image:
    """The scene as an RGB image of `size` x `size` pixels (deterministic given the scene)."""
    rng = np.random.default_rng(scene.seed)
    background = np.array(BACKGROUNDS[scene.background], np.float32) + rng.integers(-15, 16, size=3)
    noise = rng.normal(0, 6, size=(size, size, 3))
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    # Small objects go in the corners so they never hide the dominant one.
    corners = [(0.12, 0.12), (0.88, 0.12), (0.12, 0.88), (0.88, 0.88)]
    for k in rng.permutation(4)[:scene.small_count]:
        cx, cy = (size * (c + rng.uniform(-0.02, 0.02)) for c in corners[k])
        mask = _shape_mask(size, scene.small_shape, cx, cy, size * rng.uniform(0.08, 0.1))
        image.paste(_fill(size, scene.small_colour, "plain", rng), (0, 0), mask)
    px, py = POSITIONS[scene.position]
    cx, cy = size * (px + rng.uniform(-0.04, 0.04)), size * (py + rng.uniform(-0.04, 0.04))
    # Large enough (radius ~30% of the side) that the shape spans several 14-px patches of the
    # captioner's vision tower, yet clear of the corners where the small objects are.
    mask = _shape_mask(size, scene.shape, cx, cy, size * rng.uniform(0.27, 0.31))
    image.paste(_fill(size, scene.colour, scene.pattern, rng), (0, 0), mask)
    return image


def alt_text(scene: Scene, rng: np.random.Generator, rates: AltTextRates = AltTextRates()) -> tuple[str, dict]:
    """(web alt-text, what happened to it): short, names at most one object, sometimes wrong."""
    if rng.random() < rates.unrelated:
        return str(rng.choice(UNRELATED)), {"unrelated": True, "wrong_colour": False, "object": None}
    main = not (scene.small_count and rng.random() < rates.other_object)
    colour, shape = (scene.colour, scene.shape) if main else (scene.small_colour, scene.small_shape)
    wrong = bool(rng.random() < rates.wrong_colour)
    if wrong:
        colour = str(rng.choice([c for c in COLOURS if c != colour]))
    if rng.random() < rates.no_colour:
        colour = ""
    thing = f"{colour} {shape}".strip()
    template = ("{}", "photo of a {}", "{} on " + scene.background, "{} clipart", "{} picture")[rng.integers(5)]
    return template.format(thing), {"unrelated": False, "wrong_colour": wrong and bool(colour),
                                    "object": "main" if main else "small"}


def vocabulary() -> list[str]:
    """Every word of descriptions, alt-text and class names in this world."""
    words = set("a large small at the and on background of photo clipart picture".split())
    words |= set(COLOURS) | set(SHAPES) | set(PLURALS.values()) | set(BACKGROUNDS) | set(PATTERNS)
    words |= set(POSITIONS) | set(COUNT_WORDS)
    for text in UNRELATED:
        words |= set(text.split())
    return sorted(words)


def names_main_object(caption: str, label: str) -> bool:
    """Whether `caption` says "a large COLOUR [pattern] SHAPE" for the label "COLOUR SHAPE"."""
    colour, shape = label.split()
    words = caption.lower().replace(",", " ").replace(".", " ").split()
    for i in range(len(words) - 2):
        if words[i] == "large" and words[i + 1] == colour:
            rest = [w for w in words[i + 2:i + 4] if w not in PATTERNS]
            if rest[:1] == [shape]:
                return True
    return False


def caption_statistics(org: Sequence[str], recap: Sequence[str]) -> dict[str, float]:
    """The paper's Section 4 statistics: mean word counts and each side's share of the joint vocabulary."""
    org_vocab = {w for t in org for w in t.lower().split()}
    re_vocab = {w for t in recap for w in t.lower().split()}
    joint = org_vocab | re_vocab or {""}
    return {"org_mean_words": float(np.mean([len(t.split()) for t in org])) if org else 0.0,
            "re_mean_words": float(np.mean([len(t.split()) for t in recap])) if recap else 0.0,
            "org_vocab_share": len(org_vocab) / len(joint), "re_vocab_share": len(re_vocab) / len(joint)}
