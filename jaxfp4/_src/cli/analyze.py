"""``jaxfp4 analyze``: the quantization error of every float tensor of a weight file.

Reads a ``.safetensors`` or ``.npz`` file one tensor at a time, quantizes each
floating-point tensor with each requested format, and prints one row per
tensor and format; integer and other tensors are skipped.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from jaxfp4._src import extras
from jaxfp4._src import formats
from jaxfp4._src.cli.demo import check_options, check_writable, json_safe, quant_type_list
from jaxfp4._src.cli.paths import write_text

_SHOWN_NAMES = 8  # how many available names an unknown --figure lists


def add_parser(sub) -> None:
  p = sub.add_parser(
      "analyze", help="quantization error of each float tensor of a .safetensors/.npz file",
      description="Quantizes every float16/bfloat16/float32 tensor (float64 is read as "
                  "float32) of FILE with each format and prints MAE, RMSE, max abs error, "
                  "mean relative error, SQNR, bits/weight and compression per tensor.")
  p.add_argument("file", metavar="FILE", help="a .safetensors or .npz weight file")
  p.add_argument("--quant-types", type=quant_type_list, default=",".join(formats.QUANT_TYPES),
                 help="comma-separated formats (default: %(default)s)")
  p.add_argument("--blocksize", type=int, default=None,
                 help="block size for nf4/fp4/e2m1 (default: 64); mxfp4 and nvfp4 keep "
                      "their fixed 32 and 16")
  p.add_argument("--double-quant", action="store_true",
                 help="double-quantize the absmax where the format supports it")
  p.add_argument("--figure", default=None, metavar="TENSOR_NAME",
                 help="also draw the four-panel figure of this tensor")
  p.add_argument("--output", default="quantization_analysis.png", metavar="PNG",
                 help="figure path, with --figure (default: %(default)s)")
  p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
  p.add_argument("--max-tensors", type=int, default=None, metavar="N",
                 help="analyze only the first N float tensors")
  p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> int:
  import numpy as np

  from jaxfp4._src.analysis import figure
  from jaxfp4._src.analysis import metrics
  from jaxfp4._src.analysis import weights
  from jaxfp4._src.progress import bar as progress_bar

  parser: argparse.ArgumentParser = args.parser
  if args.max_tensors is not None and args.max_tensors < 0:
    parser.error(f"--max-tensors must be >= 0, got {args.max_tensors}")
  check_options(parser, args.quant_types, args.blocksize)
  check_writable(parser, "--json", args.json, inputs=[args.file])
  if args.figure is not None:
    extras.require("matplotlib", feature="--figure")
    check_writable(parser, "--output", args.output, inputs=[args.file])
    if args.json is not None and pathlib.Path(args.json).resolve() == pathlib.Path(args.output).resolve():
      parser.error(f"--json and --output name the same file {args.json!r}")
  try:
    infos = weights.list_tensors(args.file)
  except (OSError, ValueError) as e:
    parser.error(str(e))

  floats = [t for t in infos if t.is_float]
  if args.figure is not None:
    match = [t for t in infos if t.name == args.figure]
    if not match or not match[0].is_float:
      shown = ", ".join(repr(t.name) for t in floats[:_SHOWN_NAMES])
      more = f" and {len(floats) - _SHOWN_NAMES} more" if len(floats) > _SHOWN_NAMES else ""
      why = "is not a float tensor" if match else "is not in the file"
      parser.error(f"--figure: {args.figure!r} {why}; float tensors: "
                   f"{shown or '(none)'}{more}")
  limit = len(floats) if args.max_tensors is None else min(args.max_tensors, len(floats))
  analyzed = {t.name for t in floats[:limit]}
  info_of = {t.name: t for t in floats}
  print(f"{args.file}: {len(infos)} tensors, {len(floats)} float, analyzing {limit} "
        f"with {', '.join(args.quant_types)}")

  rows: list[tuple[str, str, metrics.ErrorReport]] = []
  skipped: list[tuple[str, str]] = []
  fig_data = None
  wanted = analyzed | ({args.figure} if args.figure is not None else set())
  bar = progress_bar(total=limit, enabled=True, desc="analyze", unit="tensor")
  try:
    for name, arr in weights.iter_float_tensors(args.file, names=wanted):
      bar.set_postfix_str(name[-40:])
      shape = "x".join(map(str, info_of[name].shape)) or "scalar"
      reports, deq = [], {}
      try:
        for qt in args.quant_types:
          bs, cs = metrics.format_options(qt, blocksize=args.blocksize,
                                          compress_statistics=args.double_quant)
          d, packed, state = metrics.quantize_roundtrip(arr, quant_type=qt, blocksize=bs,
                                                        compress_statistics=cs)
          reports.append(metrics.report_from_roundtrip(arr, d, packed, state))
          if name == args.figure:
            deq[qt] = d
      except ValueError as e:  # an empty or non-finite tensor has no error to report
        skipped.append((name, str(e)))
        reports, deq = [], {}
      if name in analyzed:
        rows.extend((name, shape, r) for r in reports)
        bar.update()
      if name == args.figure:
        fig_data = (np.asarray(arr), deq)
      del arr  # one tensor in memory at a time
  except (OSError, ValueError) as e:
    bar.close()
    parser.exit(1, f"{parser.prog}: error: {e}\n")
  bar.close()

  if rows:
    print(metrics.format_table(
        [r for _, _, r in rows],
        leading={"tensor": [n for n, _, _ in rows], "shape": [s for _, s, _ in rows],
                 "dtype": [r.dtype for _, _, r in rows]}))
    print()
    print(metrics.table_notes([r for _, _, r in rows]))
  else:
    print("no float tensors analyzed")
  print()
  for name, why in skipped:
    print(f"skipped {name!r}: {why}")
  if args.figure is not None:
    if fig_data is None or not fig_data[1]:
      parser.exit(1, f"{parser.prog}: error: no figure: {args.figure!r} could not be "
                     "quantized (see above)\n")
    x, deq = fig_data
    out = figure.plot_analysis(x, deq, args.output,
                               title=f"{args.figure} ({'x'.join(map(str, x.shape))}, "
                                     f"{x.dtype.name}): {', '.join(deq)}")
    print(f"figure ({args.figure}): {out.resolve()}")
  if args.json:
    doc = {"file": str(args.file), "quant_types": args.quant_types,
           "rows": [{"tensor": n, "shape": list(info_of[n].shape), **r.as_dict()}
                    for n, _, r in rows],
           "skipped": [{"tensor": n, "reason": why} for n, why in skipped]}
    write_text(args.json, json.dumps(json_safe(doc), indent=1, allow_nan=False))
    print(f"json: {pathlib.Path(args.json).resolve()}")
  return 0
