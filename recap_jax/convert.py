r"""Convert a LLaVA checkpoint folder into a self-contained recap_jax checkpoint.

    # llava-hf layout (LlavaForConditionalGeneration: weights, tokenizer, processor in one folder)
    python -m recap_jax.convert --hf_dir llava-llama-3-8b-hf --out ckpt/llava-llama3 --dtype bfloat16

    # original LLaVA-repo layout (LlavaLlamaForCausalLM, e.g. tennant/llava-llama-3-8b-hqedit):
    # no tokenizer or processor files, and usually no vision tower, in the checkpoint
    python -m recap_jax.convert --hf_dir llava-llama-3-8b-hqedit --out ckpt/hqedit \
        --vision_tower_dir clip-vit-large-patch14-336 --tokenizer_dir Meta-Llama-3-8B-Instruct

The output (Orbax params + tokenizer + image settings + prompt template) is what
`python -m recap_jax.caption --config.model.checkpoint=...` loads; no HF folder is needed after.
Tensors are read from safetensors only (pickled .bin files are refused), one at a time.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from etils import epath

from recap_jax import cli
from recap_jax.conversion import bundle, original_llava
from recap_jax.errors import ConversionError
from recap_jax.preprocess.text import TEMPLATES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recap_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf_dir", required=True,
                        help="checkpoint folder: config.json and *.safetensors, in the llava-hf layout "
                             "(LlavaForConditionalGeneration, with tokenizer and processor config) or the "
                             "original LLaVA-repo layout (LlavaLlamaForCausalLM, model_type llava_llama)")
    parser.add_argument("--layout", default="auto", choices=("auto",) + original_llava.LAYOUTS,
                        help="checkpoint layout; auto: from config.json's model_type/architectures")
    parser.add_argument("--vision_tower_dir", default=None,
                        help="original layout: HF CLIPVisionModel/CLIPModel folder (e.g. "
                             "openai/clip-vit-large-patch14-336): the vision tower weights when the "
                             "checkpoint has none, its config.json and preprocessor_config.json")
    parser.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(bundle.DTYPES),
                        help="dtype of the stored weights (default: bfloat16, as TPUs run them)")
    parser.add_argument("--tokenizer_dir", default=None,
                        help="tokenizer folder, when the checkpoint folder has none; required for the "
                             "original layout (the Meta-Llama-3-8B-Instruct tokenizer files)")
    parser.add_argument("--template", default=None,
                        help="named prompt template (e.g. llama3_llava) instead of the checkpoint's chat "
                             "template; the original layout defaults to llama3_llava")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of user errors too (or set {cli.DEBUG_ENV}=1)")
    return parser


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def convert(args: argparse.Namespace) -> int:
    """Runs one conversion; user errors raise (the caller reports them)."""
    start = time.time()
    out = epath.Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConversionError(f"--out {out} exists; pass --overwrite to replace it, or choose another --out")
    if args.template is not None and args.template not in TEMPLATES:
        raise ConversionError(f"--template {args.template!r}: known templates are {sorted(TEMPLATES)}")
    layout = original_llava.detect_layout(args.hf_dir) if args.layout == "auto" else args.layout
    if layout == "original":
        spec, tensors = original_llava.read_original(args.hf_dir, args.tokenizer_dir,
                                                     args.vision_tower_dir, args.template)
    else:
        spec = bundle.read_llava_hf_spec(args.hf_dir, args.tokenizer_dir, args.template)
        tensors = bundle.llava_hf_tensors(args.hf_dir)
    count = 0

    def progress(name: str) -> None:
        nonlocal count
        count += 1
        if count % 50 == 0:
            print(f"  {count} tensors converted ({time.time() - start:.0f}s)", flush=True)

    leaves = bundle.converted_leaves(spec.config, tensors, bundle.DTYPES[args.dtype], on_tensor=progress)
    source = {"hf_dir": str(epath.Path(args.hf_dir).resolve()), "layout": layout}
    if layout == "original":
        source.update(tokenizer_dir=str(args.tokenizer_dir),
                      vision_tower_dir=str(args.vision_tower_dir) if args.vision_tower_dir else None)
    bundle.save_converted(out, spec, leaves, args.dtype, source, overwrite=args.overwrite)
    size = tensors.total_bytes()
    print(f"converted {args.hf_dir} ({layout} layout) -> {out} ({args.dtype}) in {time.time() - start:.1f}s; "
          f"checkpoint {size / 2**30:.2f} GiB, peak RSS {peak_rss_bytes() / 2**30:.2f} GiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 converted, 2 a usage error (one line naming the file or tensor)."""
    args = build_parser().parse_args(argv)
    return cli.guarded(lambda: convert(args), args.debug or cli.debug_requested([]))


if __name__ == "__main__":
    sys.exit(main())
