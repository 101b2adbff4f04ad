"""``jaxfp4 plan``: a per-layer precision plan under a bit budget, from a saved calibration report."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
  p = sub.add_parser(
      "plan", help="choose a format per layer under a bits-per-weight budget",
      description="Reads a calibration report (CalibrationReport.save, from jaxfp4.calibrate), chooses one "
                  "candidate format per linear layer that minimizes the summed sensitivity (relative "
                  "output error x parameter share) with at most --bits stored bits per weight on "
                  "average, and prints the plan as a table. Apply it with "
                  "jaxfp4.nnx.quantize_model(model, plan=jaxfp4.PrecisionPlan.load(PATH)).")
  p.add_argument("report", metavar="REPORT", help="a calibration report JSON file")
  p.add_argument("--bits", type=float, required=True, help="average bits per weight, e.g. 4.3")
  p.add_argument("--candidates", default=None, metavar="LIST",
                 help="comma-separated candidate keys to choose from (default: all in the report)")
  p.add_argument("--figure", default=None, metavar="PNG", help="also draw the sensitivities and choices")
  p.add_argument("--json", default=None, metavar="PATH", help="also write the plan (PrecisionPlan.load reads it)")
  p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> int:
  from jaxfp4._src import extras
  from jaxfp4._src.calibration.plan import plan_precision
  from jaxfp4._src.calibration.report import CalibrationReport
  from jaxfp4._src.cli.demo import check_writable
  check_writable(args.parser, "--figure", args.figure, inputs=[args.report])
  if args.figure:
    extras.require("matplotlib", feature="--figure")
  check_writable(args.parser, "--json", args.json, inputs=[args.report], overwrite=False)
  try:
    report = CalibrationReport.load(args.report)
    plan = plan_precision(report, bits_per_weight=args.bits,
                          candidates=None if args.candidates is None else args.candidates.split(","))
  except (ValueError, OSError, KeyError) as e:
    args.parser.error(str(e))
  print(plan)
  if args.json:
    plan.save(args.json)
    print(f"wrote {args.json}")
  if args.figure:
    from jaxfp4._src.calibration.figure import plot_plan
    plot_plan(plan, args.figure)
    print(f"wrote {args.figure}")
  return 0
