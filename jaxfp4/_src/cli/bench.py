"""``jaxfp4 bench``: time the kernels next to their alternatives on this device."""

from __future__ import annotations

import argparse
import json
import platform
import sys


def add_parser(sub) -> None:
  p = sub.add_parser(
      "bench", help="time quantize/dequantize against the measured copy bandwidth",
      description="Times quantize_4bit and dequantize_4bit (XLA path and Pallas kernel) "
                  "on one weight and reports GB/s and %% of this device's copy bandwidth.")
  p.add_argument("--shape", default="8192,8192", help="weight shape, e.g. 8192,8192")
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
  p.add_argument("--quant-types", default="nf4,fp4,e2m1,mxfp4,nvfp4",
                 help="comma-separated quant types")
  p.add_argument("--sweep", default="", metavar="TYPES",
                 help="also time every candidate kernel config for these quant types, e.g. nf4,fp4")
  p.add_argument("--json", default=None, help="write the numbers here")
  p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  import jax
  import jax.numpy as jnp
  from tqdm import tqdm

  from jaxfp4._src import bench
  from jaxfp4._src import formats
  shape = tuple(int(s) for s in args.shape.split(","))
  qts = [q.strip() for q in args.quant_types.split(",") if q.strip()]
  for qt in qts:
    formats.get_format(qt)
  impls = ("xla", "pallas") if jax.default_backend() == "gpu" else ("xla",)
  configs = None
  sweep = tuple(q.strip() for q in args.sweep.split(",") if q.strip())
  if sweep and jax.default_backend() != "gpu":
    print("jaxfp4 bench: --sweep times compiled Pallas kernels and needs a GPU", file=sys.stderr)
    return 2
  if sweep:
    import pallas_kernels
    from pallas_kernels._src.dequantize_4bit import config as dcfg
    from pallas_kernels._src.quantize_4bit import config as qcfg
    del pallas_kernels
    configs = {"quantize": qcfg.candidate_configs(64), "dequantize": dcfg.candidate_configs(64)}
  bar = tqdm(total=None, desc="bench", unit="step")
  copy_bw, rows = bench.run(shape, jnp.dtype(args.dtype), tuple(qts), (False, True), impls,
                            configs, sweep,
                            progress=lambda s: (bar.set_postfix_str(s), bar.update()))
  bar.close()
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
        f"python {platform.python_version()}, weight {shape} {args.dtype}")
  print(bench.format_table(copy_bw, rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": device.device_kind, "jax": jax.__version__, "shape": shape,
                 "dtype": args.dtype, "copy_GBps": copy_bw / 1e9,
                 "rows": [r.as_dict() for r in rows]}, f, indent=1)
  return 0
