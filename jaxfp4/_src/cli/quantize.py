"""``jaxfp4 quantize``: a Hugging Face safetensors model to a bitsandbytes 4-bit checkpoint."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
  p = sub.add_parser(
      "quantize", help="convert a bf16 Hugging Face model directory to bitsandbytes 4-bit",
      description="Streams every tensor of IN_DIR (config.json + model.safetensors or shards), "
                  "quantizes each linear weight to a bitsandbytes 4-bit tensor group and writes "
                  "OUT_DIR, which transformers + bitsandbytes and jaxfp4.models.llama load "
                  "without re-quantizing. IN_DIR is never written to; OUT_DIR must be new or empty.")
  p.add_argument("in_dir", metavar="IN_DIR", help="Hugging Face model directory")
  p.add_argument("out_dir", metavar="OUT_DIR", help="new directory for the 4-bit checkpoint")
  p.add_argument("--quant-type", choices=("nf4", "fp4"), default="nf4", help="(default: %(default)s)")
  p.add_argument("--double-quant", action="store_true", help="double-quantize the absmax (bnb nested)")
  p.add_argument("--blocksize", type=int, default=64, help="elements per absmax block (default: %(default)s)")
  p.add_argument("--skip", action="append", default=None, metavar="NAME",
                 help="module name or glob to keep in high precision; repeatable (default: lm_head)")
  p.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
                 help="cast float tensors before quantizing (default: %(default)s, as stored)")
  p.add_argument("--compute-dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                 help="bnb_4bit_compute_dtype to record (default: %(default)s)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> int:
  from jaxfp4._src.io.convert import quantize_checkpoint
  try:
    report = quantize_checkpoint(
        args.in_dir, args.out_dir, quant_type=args.quant_type, blocksize=args.blocksize,
        compress_statistics=args.double_quant,
        skip=tuple(args.skip) if args.skip is not None else ("lm_head",),
        dtype=args.dtype, compute_dtype=args.compute_dtype, progress=not args.no_progress)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    args.parser.error(str(e))
  print(report)
  return 0
