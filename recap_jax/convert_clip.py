r"""CLIP checkpoints to and from open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors).

    python -m recap_jax.convert_clip --from open_clip SRC DEST [--tokenizer TOKENIZER_DIR]
    python -m recap_jax.convert_clip --to open_clip SRC DEST

--from: SRC is an open_clip folder (e.g. a released Recap-CLIP, ViT-L-16-HTxt-Recap-CLIP); DEST
becomes a folder that `train_clip` and `eval_retrieval` / `eval_suite` take as
`--config.model.hf_dir=DEST` (a HF CLIPModel layout; a tokenizer folder given with --tokenizer is
copied in, else name one with --config.data.tokenizer / --config.tokenizer).
--to: SRC is a train_clip workdir (its latest checkpoint) or a converted folder; DEST becomes an
open_clip folder: `open_clip.create_model_and_transforms("local-dir:DEST")` loads it.
Only safetensors are read and written. DEST must not exist; it appears only when complete.
Exit status: 0 done, 2 a usage error (one line naming the file, field or tensor). See docs/clip.md.
"""

from absl import flags

from recap_jax import cli
from recap_jax.errors import ConfigError

_FROM = flags.DEFINE_enum("from", None, ["open_clip"], "Convert FROM this format into ours.")
_TO = flags.DEFINE_enum("to", None, ["open_clip"], "Convert ours TO this format.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "With --from: a HF tokenizer folder to copy into DEST.")


def main(argv) -> int:
    from recap_jax.clip import folders

    if bool(_FROM.value) == bool(_TO.value):
        raise ConfigError("give exactly one of --from open_clip / --to open_clip")
    if len(argv) != 3:
        raise ConfigError(f"expected SRC and DEST, got {list(argv[1:])}: "
                          "python -m recap_jax.convert_clip --from open_clip SRC DEST")
    src, dest = argv[1], argv[2]
    if _FROM.value:
        cfg = folders.from_open_clip(src, dest, _TOKENIZER.value)
    else:
        if _TOKENIZER.value:
            raise ConfigError("--tokenizer goes with --from open_clip only")
        cfg = folders.to_open_clip(src, dest)
    print(f"[convert_clip] {src} -> {dest}: image {cfg.vision.width}w x {cfg.vision.depth} "
          f"({cfg.image_pool} pooling), text {cfg.text.width}w x {cfg.text.depth} ({'argmax' if cfg.pool_text_at_argmax and cfg.text_pool == 'eos' else cfg.text_pool}), "
          f"embed {cfg.embed_dim}")
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
