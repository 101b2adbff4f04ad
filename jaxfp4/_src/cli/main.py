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
from jaxfp4._src.cli.paths import CommandError
from jaxfp4._src.extras import MissingExtraError
from jaxfp4._src.version import __version__

COMMANDS = (demo_cmd, analyze_cmd, bench_cmd, quantize_cmd, inspect_cmd, plan_cmd)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="jaxfp4",
      description="bitsandbytes-compatible 4-bit quantization for JAX.")
  parser.add_argument("--version", action="version", version=f"jaxfp4 {__version__}")
  parser.add_argument("--debug", action="store_true",
                      help="show the Python traceback of an error instead of one line")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for module in COMMANDS:
    module.add_parser(sub)
  return parser


def _one_line(e: BaseException) -> str:
  """What failed and on which path, from an OSError (or the message of anything else)."""
  if isinstance(e, OSError) and e.strerror:
    what = f"{e.strerror}: {e.filename!r}" if e.filename else e.strerror
    if e.filename2:
      what += f" -> {e.filename2!r}"
    hint = {PermissionError: "check its permissions", IsADirectoryError: "give a file, not a folder",
            NotADirectoryError: "a part of the path is a file, not a folder",
            FileExistsError: "choose a new path or remove it",
            FileNotFoundError: "check the path"}.get(type(e), "check the path")
    return f"{what} ({hint})"
  return str(e) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return int(args.run(args) or 0)
  except (OSError, ValueError, CommandError, MissingExtraError) as e:
    # A usage or file problem is one line; the traceback helps only a developer.
    if args.debug:
      raise
    print(f"jaxfp4 {args.command}: error: {_one_line(e)} (--debug shows the traceback)",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
