"""``jaxfp4 quantize``: a Hugging Face safetensors model to a bitsandbytes 4-bit checkpoint.

``--method rtn`` (the default) streams tensor by tensor (bitsandbytes' own
rounding); ``gptq``, ``clip`` and ``hqq`` load the model and run
``jaxfp4.models.decoder.quantize_pretrained`` layer by layer.
"""

from __future__ import annotations

import argparse

METHODS = ("rtn", "gptq", "clip", "hqq")


def add_parser(sub) -> None:
  p = sub.add_parser(
      "quantize", help="convert a bf16 Hugging Face model directory to bitsandbytes 4-bit",
      description="Quantizes every linear weight of IN_DIR (config.json + model.safetensors or shards) to a "
                  "bitsandbytes 4-bit tensor group and writes OUT_DIR, which transformers + bitsandbytes and "
                  "jaxfp4.models load without re-quantizing. --method rtn streams tensor by tensor; gptq "
                  "(error compensation on calibration data), clip (absmax clipping search) and hqq "
                  "(calibration-free scale fit) quantize a decoder layer by layer. IN_DIR is never written "
                  "to; OUT_DIR must be new or empty and appears only when complete.")
  p.add_argument("in_dir", metavar="IN_DIR", help="Hugging Face model directory")
  p.add_argument("out_dir", metavar="OUT_DIR", help="new directory for the 4-bit checkpoint")
  p.add_argument("--quant-type", choices=("nf4", "fp4"), default="nf4", help="(default: %(default)s)")
  p.add_argument("--double-quant", action="store_true", help="double-quantize the absmax (bnb nested)")
  p.add_argument("--blocksize", type=int, default=64, help="elements per absmax block (default: %(default)s)")
  p.add_argument("--skip", action="append", default=None, metavar="NAME",
                 help="module name or glob to keep in high precision; repeatable (default: lm_head)")
  p.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
                 help="cast float tensors before quantizing (default: %(default)s, as stored; rtn only)")
  p.add_argument("--compute-dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                 help="bnb_4bit_compute_dtype to record (default: %(default)s)")
  g = p.add_argument_group("methods beyond round-to-nearest")
  g.add_argument("--method", choices=METHODS, default="rtn",
                 help="rtn: bitsandbytes' rounding; gptq: GPTQ error compensation; clip: per-row absmax "
                      "clipping search; hqq: calibration-free l_p scale fit (default: %(default)s)")
  g.add_argument("--calibration", metavar="FILE", default=None,
                 help="token ids (.npy / .safetensors, [rows, seq] or a 1-D stream) or text (needs IN_DIR/"
                      "tokenizer.json and the tokenizers package); required for gptq and clip")
  g.add_argument("--seq-len", type=int, default=512, help="window length for a 1-D stream or text (default: %(default)s)")
  g.add_argument("--num-samples", type=int, default=128, help="calibration rows used at most (default: %(default)s)")
  g.add_argument("--percdamp", type=float, default=0.01, help="GPTQ damping, fraction of mean(diag H) (default: %(default)s)")
  g.add_argument("--no-act-order", action="store_true", help="GPTQ: columns in their stored order")
  g.add_argument("--lazy-block", type=int, default=128, help="GPTQ: columns per lazy update (default: %(default)s)")
  g.add_argument("--refit", action="store_true", help="GPTQ: re-fit each block's absmax after rounding")
  g.add_argument("--clip-search", action="store_true",
                 help="GPTQ: choose each row's absmax clipping by the search of --method clip first")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.set_defaults(run=run, parser=p)


def _validate(args: argparse.Namespace):
  """Every argument checked before any work; returns the calibration ids (or None)."""
  from pathlib import Path

  from jaxfp4._src.io import checkpoint
  from jaxfp4._src.io.convert import _check_dirs
  parser = args.parser
  for name in ("seq_len", "num_samples", "lazy_block"):
    if getattr(args, name) <= 0:
      parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
  if not args.percdamp > 0:
    parser.error(f"--percdamp must be > 0, got {args.percdamp}")
  if args.method in ("gptq", "clip") and args.calibration is None:
    parser.error(f"--method {args.method} needs --calibration FILE (token ids or text)")
  if args.method == "rtn" and args.calibration is not None:
    parser.error("--calibration is not used by --method rtn; choose gptq, clip or hqq")
  if args.method != "gptq" and (args.refit or args.clip_search or args.no_act_order):
    parser.error("--refit, --clip-search and --no-act-order are GPTQ options; add --method gptq")
  if args.method != "rtn" and args.dtype != "auto":
    parser.error(f"--dtype applies to --method rtn only (got --method {args.method})")
  in_dir, out_dir = Path(args.in_dir), Path(args.out_dir)
  try:
    _check_dirs(in_dir, out_dir)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    parser.error(str(e))
  if args.calibration is None:
    return None
  from jaxfp4._src.cli.tokens import read_calibration
  config = checkpoint.read_config(in_dir)
  if config.get("quantization_config") is not None:
    parser.error(f"{in_dir}/config.json already has a quantization_config; give the unquantized checkpoint")
  try:
    return read_calibration(args.calibration, in_dir, seq_len=args.seq_len, num_samples=args.num_samples,
                            vocab_size=int(config.get("vocab_size", 0) or 0))
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))


def run(args: argparse.Namespace) -> int:
  ids = _validate(args)
  if args.method == "rtn":
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
  from jaxfp4._src.models.decoder.quantize_pretrained import write_quantized
  method_report = write_quantized(
      args.in_dir, args.out_dir, calibration=ids, method=args.method, quant_type=args.quant_type,
      blocksize=args.blocksize, compress_statistics=args.double_quant, percdamp=args.percdamp,
      act_order=not args.no_act_order, lazy_block=args.lazy_block, refit=args.refit,
      clip_search=args.clip_search,
      skip=tuple(args.skip) if args.skip is not None else ("lm_head",), compute_dtype=args.compute_dtype,
      progress=not args.no_progress)
  print(method_report)
  print(f"wrote {args.out_dir}")
  return 0
