"""Fixtures for the analysis tests: caption outputs with captions chosen by hand."""

import numpy as np

from recap_jax.clip import synthetic

# (org_caption, re_caption, generated tokens): each recaption chosen to raise one flag or none.
KNOWN = [
    ("A red car.", "A shiny red car parked on a quiet street.", 10),
    ("dog", "A brown dog sleeps on a red sofa near the window.", 12),
    ("", "The first image shows a cat; the second image shows a dog.", 13),  # template
    ("sunset beach photo", "", 0),  # empty
    ("red car red car", "a dog and a cat a dog and a cat a dog and a cat a dog and a cat", 21),  # repetition
    ("Tree", "A tall green tree", 128),  # truncated (hit max_new_tokens=128)
]


def known_records():
    rng = np.random.default_rng(0)
    records = []
    for i, (org, re, tokens) in enumerate(KNOWN):
        combo = synthetic.COMBINATIONS[i]
        image = synthetic.encode_png(synthetic.render(*combo, 16, rng))
        records.append(dict(key=f"k{i}", url=f"http://example.com/{i}.png", org_caption=org, re_caption=re,
                            image=image, width=16, height=16, org_caption_length=len(org.split()),
                            re_caption_length=tokens))
    return records
