"""analyze --clip: per-sample scores and win rates from a trained tiny CLIP and from a HF CLIP folder."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from clip_helpers import tiny_config, write_shapes
from recap_jax.analysis.clip_scores import ClipScorer
from recap_jax.analysis.run import AnalyzeSettings, analyze
from recap_jax.clip import data as data_lib, synthetic, trainer
from recap_jax.data.images import decode_image
from recap_jax.preprocess.image import CLIP_MEAN, CLIP_STD
from recap_jax.release.parquet_export import export_parquet
from recap_jax.release.rows import open_rows


def _rigged(folder, correct_side, seed):
    """One image per combination; `correct_side` gets its own caption, the other side the
    caption of another image (a derangement), both in the same descriptive style."""
    records = synthetic.make_records(0, 32, seed, one_per_combination=True)
    shift = np.random.default_rng(seed).permutation(len(records))
    wrong = {i: records[shift[i] if shift[i] != i else (i + 1) % len(records)]["re_caption"]
             for i in range(len(records))}
    for i, r in enumerate(records):
        right = r["re_caption"]
        r["re_caption"], r["org_caption"] = (right, wrong[i]) if correct_side == "re" else (wrong[i], right)
        r.pop("sha256")
    return synthetic.write_captioner_output(folder, records)


@pytest.fixture(scope="module")
def trained_clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    shapes = write_shapes(root / "shapes", num_train=512)
    config = tiny_config(shapes, root / "run", num_steps=200, warmup_steps=20, log_every=100, checkpoint_every=200)
    config.eval.datasets.heldout.folder = ""
    trainer.train(config)
    return str(root / "run")


@pytest.mark.parametrize("correct_side", ["re", "org"])
def test_rigged_captions_win_for_the_unshuffled_side(trained_clip, tmp_path, correct_side):
    output = _rigged(str(tmp_path / "out"), correct_side, seed=5)
    s = analyze(output, AnalyzeSettings(clip=trained_clip, clip_batch_size=32, progress=False))
    c = s["clip"]
    print(correct_side, c)
    assert c["scored"] == 96 and c["failed"] == 0
    winner, loser = (c["re_win_rate"], c["org_win_rate"]) if correct_side == "re" else (c["org_win_rate"], c["re_win_rate"])
    assert winner >= 0.9 and winner + loser == pytest.approx(1.0)
    scores = pq.read_table(f"{output}/analysis/clip_scores.parquet").to_pylist()
    assert [r["key"] for r in scores] == [r.key for r in open_rows(output)]
    re_wins = np.mean([r["re_clip_score"] > r["org_clip_score"] for r in scores])
    assert re_wins == pytest.approx(c["re_win_rate"])
    assert (tmp_path / "out" / "analysis" / "clip_scores.png").exists()

    # export fills the score columns from them
    export_parquet(output, str(tmp_path / "parquet"), progress=False)
    exported = pq.read_table(str(tmp_path / "parquet" / "train-00000.parquet")).to_pylist()
    assert [(r["re_clip_score"], r["org_clip_score"]) for r in exported] == [
        (r["re_clip_score"], r["org_clip_score"]) for r in scores]


def test_hf_clip_folder_scores_equal_transformers(tmp_path):
    folder = tmp_path / "hf_clip"
    tokenizer_words = synthetic.vocabulary()
    synthetic.write_word_tokenizer(str(folder), tokenizer_words)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer_words) + 3, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=24,
                         eos_token_id=1, bos_token_id=0, pad_token_id=1),
        vision_config=dict(image_size=24, patch_size=8, hidden_size=40, intermediate_size=56,
                           num_hidden_layers=2, num_attention_heads=5),
        projection_dim=16)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)

    output = synthetic.write_captioner_output(str(tmp_path / "out"), synthetic.make_records(5, 32, seed=2))
    rows = list(open_rows(output))
    scorer = ClipScorer(str(folder), batch_size=4)
    got = np.array(scorer.score(rows))
    assert scorer.text_length == 24

    pixels = np.stack([data_lib.resize_center_crop(decode_image(r.image), 24) for r in rows])
    pixels = (pixels / 255.0 - CLIP_MEAN) / CLIP_STD
    tok = data_lib.Tokenizer(str(folder))
    with torch.no_grad():
        img = model.get_image_features(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)).float())
        img = getattr(img, "pooler_output", img).numpy()
        want = []
        for field in ("re_caption", "org_caption"):
            ids = torch.from_numpy(tok([getattr(r, field) for r in rows], 24).astype(np.int64))
            txt = model.get_text_features(input_ids=ids)
            txt = getattr(txt, "pooler_output", txt).numpy()
            want.append(np.sum(img * txt, -1) / np.linalg.norm(img, axis=-1) / np.linalg.norm(txt, axis=-1))
    np.testing.assert_allclose(got, np.stack(want, axis=1), atol=1e-4)
