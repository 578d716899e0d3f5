"""Convert a GGUF model file into a Hugging Face folder that vLLM's CPU backend loads.

Run by path with the engine's python (it imports torch and transformers, which the
gateway's environment does not have):
    python convert.py --gguf FILE.gguf --out FOLDER --dtype float32
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def convert(gguf: Path, out: Path, dtype: str) -> None:
    """Dequantize the GGUF weights to dtype and save model and tokenizer into out."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype))
    # The weights are dequantized, but the model still carries GGUF's quantization marker and
    # save_pretrained refuses it ("quantized with QuantizationMethod.GGUF and is not serializable").
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and convert."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    args = parser.parse_args(argv)
    convert(args.gguf.resolve(), args.out, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
