"""``jaxfp4 demo``: quantize a few random weights and show the error of each 4-bit format.

The default run is the bitsandbytes FP4 tutorial experiment: 50 weights drawn
from N(0, 0.5), blocksize 64, a summary, the error table and the four-panel
figure ``fp4_quantization_analysis.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from typing import Any

from jaxfp4._src import extras
from jaxfp4._src import formats
from jaxfp4._src.cli.paths import write_text


def quant_type_list(text: str) -> list[str]:
  """argparse ``type=``: a comma-separated list of known quant types."""
  qts = [q.strip() for q in text.split(",") if q.strip()]
  if not qts:
    raise argparse.ArgumentTypeError(
        f"expected a comma-separated list of {', '.join(formats.QUANT_TYPES)}")
  bad = [q for q in qts if q not in formats.QUANT_TYPES]
  if bad:
    raise argparse.ArgumentTypeError(
        f"unknown quant type {', '.join(map(repr, bad))}; choose from "
        f"{', '.join(formats.QUANT_TYPES)}")
  return list(dict.fromkeys(qts))  # drop repeats, keep the order


def check_options(parser: argparse.ArgumentParser, quant_types: list[str],
                  blocksize: int | None) -> None:
  """Reports a block size that a requested format cannot use as a usage error."""
  from jaxfp4._src.analysis import metrics
  for qt in quant_types:
    try:
      metrics.format_options(qt, blocksize=blocksize, compress_statistics=False)
    except ValueError as e:
      parser.error(f"--blocksize: {e}")


def check_writable(parser: argparse.ArgumentParser, option: str, path: str | None, *,
                   inputs=(), overwrite: bool = True) -> None:
  """Fails before any work if ``path`` cannot be written (see ``paths.check_output``)."""
  from jaxfp4._src.cli.paths import check_output
  check_output(parser, option, path, inputs=inputs, overwrite=overwrite)


def json_safe(value: Any) -> Any:
  """NaN becomes null and +-inf the strings "inf"/"-inf": strict JSON has neither."""
  if isinstance(value, float) and not math.isfinite(value):
    return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value


def add_parser(sub) -> None:
  p = sub.add_parser(
      "demo", help="quantize random N(0, std) weights and compare the 4-bit formats",
      description="Draws --size weights from N(0, --std) (float32), quantizes them with "
                  "each format, prints the input summary and an error table, and writes "
                  "the four-panel analysis figure.")
  p.add_argument("--size", type=int, default=50, help="number of weights (default: 50)")
  p.add_argument("--std", type=float, default=0.5,
                 help="standard deviation of the weights (default: 0.5)")
  p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
  p.add_argument("--blocksize", type=int, default=None,
                 help="block size for nf4/fp4/e2m1 (default: the format default, 64); "
                      "mxfp4 and nvfp4 keep their fixed 32 and 16")
  p.add_argument("--quant-types", type=quant_type_list, default="fp4,nf4,e2m1,mxfp4,nvfp4",
                 help="comma-separated formats for the table (default: %(default)s)")
  p.add_argument("--double-quant", action="store_true",
                 help="double-quantize the absmax (compress_statistics) where the format "
                      "supports it (nf4, fp4, e2m1)")
  p.add_argument("--output", default="fp4_quantization_analysis.png",
                 help="figure path (default: %(default)s)")
  p.add_argument("--figure-types", type=quant_type_list, default=None,
                 help="comma-separated formats drawn in the figure (default: those of fp4,nf4 "
                      "in --quant-types, else the first two of --quant-types)")
  p.add_argument("--json", default=None, metavar="PATH",
                 help="also write the input summary and the reports as JSON here")
  p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> int:
  import numpy as np

  from jaxfp4._src.analysis import figure
  from jaxfp4._src.analysis import metrics

  parser: argparse.ArgumentParser = args.parser
  if args.size < 1:
    parser.error(f"--size must be at least 1, got {args.size}")
  if not (math.isfinite(args.std) and args.std >= 0):
    parser.error(f"--std must be a finite number >= 0, got {args.std}")
  if args.figure_types is None:  # the seed's pair, but only formats the table shows
    args.figure_types = [q for q in ("fp4", "nf4") if q in args.quant_types] or args.quant_types[:2]
  check_options(parser, args.quant_types + args.figure_types, args.blocksize)
  check_writable(parser, "--output", args.output)
  check_writable(parser, "--json", args.json)

  x = np.random.default_rng(args.seed).normal(0.0, args.std, args.size).astype(np.float32)
  print(f"input: {x.size} weights ~ N(0, {args.std:g}), seed {args.seed}, float32")
  print(f"  range [{x.min():.4f}, {x.max():.4f}]  mean {x.mean():.4f}  std {x.std():.4f}")
  print(f"  memory: {x.nbytes} bytes")
  print()

  reports, deq = [], {}
  for qt in dict.fromkeys(args.quant_types + args.figure_types):
    bs, cs = metrics.format_options(qt, blocksize=args.blocksize,
                                    compress_statistics=args.double_quant)
    d, packed, state = metrics.quantize_roundtrip(x, quant_type=qt, blocksize=bs,
                                                  compress_statistics=cs)
    if qt in args.quant_types:
      reports.append(metrics.report_from_roundtrip(x, d, packed, state))
    if qt in args.figure_types:
      deq[qt] = d
  print(metrics.format_table(reports))
  print()
  print(metrics.table_notes(reports))
  print()
  for r in reports:
    print(f"{r.quant_type:>6}: {r.bytes_before} bytes -> {r.packed_bytes} bytes packed + "
          f"{r.state_bytes} bytes state = {r.bytes_after} bytes "
          f"({r.compression_ratio:.2f}x, {r.bits_per_weight:.2f} bits/weight)")

  print()
  out = None
  if extras.available("matplotlib"):
    out = figure.plot_analysis(
        x, deq, args.output,
        title=f"{', '.join(deq)} quantization of {x.size} weights ~ N(0, {args.std:g})")
    print(f"figure ({', '.join(deq)}): {out.resolve()}")
  else:
    # The core install has no matplotlib: the table is the result, the figure optional.
    print(f"figure: not drawn, {extras.missing_extra('matplotlib', feature='the figure')}")
  if args.json:
    doc = {"size": x.size, "std": args.std, "seed": args.seed, "dtype": "float32",
           "min": float(x.min()), "max": float(x.max()), "mean": float(x.mean()),
           "std_measured": float(x.std()), "bytes": x.nbytes,
           "figure": None if out is None else str(out),
           "reports": [r.as_dict() for r in reports]}
    write_text(args.json, json.dumps(json_safe(doc), indent=1, allow_nan=False))
    print(f"json: {pathlib.Path(args.json).resolve()}")
  sys.stdout.flush()
  return 0
