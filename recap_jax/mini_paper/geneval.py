"""GenEval-mini: prompt following, an FID-analogue and a CLIP-score analogue for generated
miniature-world images, judged by `judge.py`.

GenEval (Ghosh et al.) scores text-to-image prompt following per task with a detector; an image
counts only if every clause of its prompt holds, and the overall score is the mean of the tasks.
Here every prompt was written from a known scene, so its clauses are exact, and the detector is
the judge (its accuracy on real held-out scenes is reported beside every score). Tasks:

- colour: the main object's colour (alt-text: the named object's colour, main or small);
- shape: the main object's shape (alt-text: some object of the named shape);
- position: the main object's position;
- colour_attribution: the main object's colour AND the background (colours bound to the right
  thing; alt-text: the named colour on the named object, and the named background);
- counting: the number of small objects (0-3);
- two_objects: the main object (colour, shape) AND the small objects' colour. Their shape is not a
  clause: at the DiT's 32 px a small object is ~6 px across and the judge reads its shape well
  below the 95% bar (reported as `small_shape`; docs/mini_paper.md).

Two prompt sets: the held-out scenes' true descriptions (the paper's "Recap" prompts) and their
web alt-text (the "Raw" prompts: only the clauses the alt-text states; unrelated alt-text states
none and is scored by FID and CLIP score only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from recap_jax.clip import mini_world as world
from recap_jax.mini_paper.judge import ATTRIBUTES

TASKS = ("colour", "shape", "position", "colour_attribution", "counting", "two_objects")
# A clause: (attribute, class name), or ("object", (colour or "", shape)): some object, main or small,
# of that shape (and colour, if given).
Clause = tuple[str, Any]


def description_clauses(scene: world.Scene) -> dict[str, list[Clause]]:
    """task -> clauses of the scene's full description (every task; two objects where there are some)."""
    main = [("colour", scene.colour), ("shape", scene.shape)]
    small = [("small_colour", scene.small_colour)]
    out = {"colour": main[:1], "shape": main[1:], "position": [("position", scene.position)],
           "colour_attribution": [main[0], ("background", scene.background)],
           "counting": [("small_count", str(scene.small_count))]}
    if scene.small_count:
        out["two_objects"] = main + small
    return out


def alt_text_clauses(text: str) -> dict[str, list[Clause]]:
    """task -> clauses the alt-text states, read from its words (the world's alt-text templates:
    "[colour] shape", "photo of a ...", "... on BACKGROUND", "... clipart", "... picture")."""
    words = text.lower().split()
    colour = next((w for w in words if w in world.COLOURS), "")
    shape = next((w for w in words if w in world.SHAPES), "")
    background = next((b for a, b in zip(words, words[1:]) if a == "on" and b in world.BACKGROUNDS), "")
    if not shape:  # unrelated text: nothing to follow
        return {}
    out: dict[str, list[Clause]] = {"shape": [("object", ("", shape))]}
    if colour:
        out["colour"] = [("object", (colour, shape))]
        if background:
            out["colour_attribution"] = [("object", (colour, shape)), ("background", background)]
    return out


def _holds(clause: Clause, read: dict[str, str]) -> bool:
    name, value = clause
    if name in ("small_shape", "small_colour"):  # small objects must be there to have a colour
        return read["small_count"] != "0" and read[name] == value
    if name != "object":
        return read[name] == value
    colour, shape = value
    main = read["shape"] == shape and (not colour or read["colour"] == colour)
    small = (read["small_count"] != "0" and read["small_shape"] == shape
             and (not colour or read["small_colour"] == colour))
    return main or small


def readings(predictions: dict[str, np.ndarray]) -> list[dict[str, str]]:
    """The judge's class indices as class names, one dict per image."""
    n = len(next(iter(predictions.values())))
    return [{name: ATTRIBUTES[name][int(predictions[name][i])] for name in ATTRIBUTES} for i in range(n)]


def prompt_following(predictions: dict[str, np.ndarray],
                     clauses: Sequence[dict[str, list[Clause]]]) -> dict[str, Any]:
    """Per task: the share of its images whose every clause holds (and how many images it has);
    `overall`: the mean over tasks that have images."""
    read = readings(predictions)
    tasks = {}
    for task in TASKS:
        correct = [all(_holds(c, r) for c in cl[task]) for cl, r in zip(clauses, read) if task in cl]
        if correct:
            tasks[task] = {"score": float(np.mean(correct)), "num_images": len(correct)}
    overall = float(np.mean([t["score"] for t in tasks.values()])) if tasks else float("nan")
    return {"tasks": tasks, "overall": overall}


def evaluate_images(images: np.ndarray, clauses: Sequence[dict[str, list[Clause]]], judge: Any,
                    reference_features: np.ndarray,
                    distance: Callable[[np.ndarray, np.ndarray], float]) -> dict[str, Any]:
    """GenEval-mini of one prompt set: prompt following, and the FID-analogue (`distance`, the
    Frechet distance of the FID, on the judge's penultimate features vs the real held-out scenes')."""
    features, predictions = judge.read(images)
    return {**prompt_following(predictions, clauses), "fid": float(distance(features, reference_features))}
