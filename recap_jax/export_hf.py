r"""A converted captioner -> a llava-hf folder that transformers loads (weights, config, tokenizer,
processor with its chat template, generation config).

    python -m recap_jax.export_hf CKPT DEST [--dtype bfloat16|float32]

CKPT is a converted checkpoint (`python -m recap_jax.convert --out CKPT`, from either layout: the
original `llava_llama` one of the released captioner included) or a fine-tune's `<workdir>/export`.
DEST is written the way `finetune` writes `<workdir>/export_hf` (the same code): then
`LlavaForConditionalGeneration.from_pretrained(DEST)` and `AutoProcessor.from_pretrained(DEST)`.
A named conversation template (the original layout's `llama3_llava`) becomes the processor's chat
template; the original layout's `<image>` id, one past the LLaMA vocabulary, gets a zero embedding
row and is suppressed in generation. DEST must not exist; it appears only when complete.
Exit status: 0 done, 2 a usage error (one line naming the file or field). See docs/original_layout.md.
"""

from absl import flags

from recap_jax import cli
from recap_jax.errors import ConfigError, ConversionError

_DTYPE = flags.DEFINE_enum("dtype", None, ["bfloat16", "float32"],
                           "dtype of the exported weights (default: the checkpoint's).")


def main(argv) -> int:
    from etils import epath

    from recap_jax.captioning.model_loading import read_converted_spec, restore_params
    from recap_jax.conversion.atomic import write_atomically
    from recap_jax.finetuning.export import export_hf, hf_config

    if len(argv) != 3:
        raise ConfigError(f"expected CKPT and DEST, got {list(argv[1:])}: python -m recap_jax.export_hf CKPT DEST")
    ckpt, dest = argv[1], argv[2]
    if epath.Path(dest).exists():
        raise ConfigError(f"DEST {dest} exists; choose a new folder (nothing was written)")
    spec, stored = read_converted_spec(ckpt)
    hf_config(spec.config, spec.tokenizer)  # an architecture llava-hf cannot express fails before any read
    try:
        params = restore_params(ckpt, spec.config, stored)
    except (ValueError, KeyError) as e:  # stored arrays that do not fit recap_config.json
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{ckpt}: its params do not fit its recap_config.json ({first})") from None
    dtype = _DTYPE.value or stored
    write_atomically(dest, lambda tmp: export_hf(tmp, spec, params, dtype))
    print(f"[export_hf] {ckpt} -> {dest} ({dtype}; LlavaForConditionalGeneration + processor)")
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
