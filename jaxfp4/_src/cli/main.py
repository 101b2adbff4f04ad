"""``jaxfp4`` command line: ``demo``, ``analyze``, ``bench``, ``quantize``, ``inspect``, ``plan``."""

from __future__ import annotations

import argparse
import sys

from jaxfp4._src.cli import analyze as analyze_cmd
from jaxfp4._src.cli import bench as bench_cmd
from jaxfp4._src.cli import demo as demo_cmd
from jaxfp4._src.cli import inspect as inspect_cmd
from jaxfp4._src.cli import plan as plan_cmd
from jaxfp4._src.cli import quantize as quantize_cmd
from jaxfp4._src.version import __version__

COMMANDS = (demo_cmd, analyze_cmd, bench_cmd, quantize_cmd, inspect_cmd, plan_cmd)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="jaxfp4",
      description="bitsandbytes-compatible 4-bit quantization for JAX.")
  parser.add_argument("--version", action="version", version=f"jaxfp4 {__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for module in COMMANDS:
    module.add_parser(sub)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  return int(args.run(args) or 0)


if __name__ == "__main__":
  sys.exit(main())
