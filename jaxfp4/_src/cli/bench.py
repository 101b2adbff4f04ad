"""``jaxfp4 bench``: time the kernels next to their alternatives on this device."""

from __future__ import annotations

import argparse
import json
import platform
import sys


GPU_SHAPES = "4096x4096,8192x8192,14336x4096,4096x14336"
GPU_MS = "1,2,4,8,16,32,64,128,512,2048,8192"
CPU_SHAPES = "1024x1024"
CPU_MS = "1,16,128"
GPU_SHAPE = "8192,8192"
CPU_SHAPE = "1024,1024"


def add_parser(sub) -> None:
  p = sub.add_parser(
      "bench", help="time quantize/dequantize and matmul_4bit against their rooflines",
      description="Times quantize_4bit and dequantize_4bit (XLA path and Pallas kernel) "
                  "on one weight and reports GB/s and % of this device's copy bandwidth; "
                  "then times matmul_4bit (forward and input gradient) next to JAX bf16 "
                  "dot_general and dequantize-then-dot over token counts M and weight "
                  "shapes, with % of the measured roofline and the speedup over bf16. "
                  "Defaults are sized for the device: GPU-sized weights take minutes on a CPU.")
  p.add_argument("--shape", default=None,
                 help=f"weight shape of the quantize table; default on a GPU {GPU_SHAPE}, on a CPU {CPU_SHAPE}")
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
  p.add_argument("--quant-types", default="nf4,fp4,e2m1,mxfp4,nvfp4",
                 help="comma-separated quant types")
  p.add_argument("--sweep", default="", metavar="TYPES",
                 help="also time every candidate kernel config for these quant types, e.g. nf4,fp4")
  p.add_argument("--json", default=None, help="write the numbers here")
  p.add_argument("--skip-quantize", action="store_true", help="only the matmul table")
  p.add_argument("--skip-matmul", action="store_true", help="only the quantize table")
  p.add_argument("--matmul-shapes", default=None,
                 help="weight shapes N x K (out x in features); default on a GPU "
                      f"{GPU_SHAPES}, on a CPU {CPU_SHAPES}")
  p.add_argument("--ms", default=None,
                 help=f"token counts M of the matmul table; default on a GPU {GPU_MS}, "
                      f"on a CPU {CPU_MS}")
  p.add_argument("--format-types", default="nf4+dq,fp4,e2m1,mxfp4,nvfp4",
                 help="formats compared with nf4 on the 8192x8192 weight, or the first matmul "
                      "shape when that one is not timed (+dq: nested)")
  p.add_argument("--format-ms", default="1,16,128", help="M values of the format comparison")
  p.add_argument("--no-backward", action="store_true", help="skip the input-gradient rows")
  p.add_argument("--sweep-matmul", default="", metavar="MS",
                 help="also time every candidate matmul kernel config at these M (GPU)")
  p.add_argument("--quick", action="store_true",
                 help="few repetitions in every table (a smoke test: the numbers are noisy)")
  p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> int:
  import jax
  import jax.numpy as jnp

  from jaxfp4._src import bench
  from jaxfp4._src import formats
  from jaxfp4._src.cli.demo import check_writable
  from jaxfp4._src.cli.paths import write_text
  from jaxfp4._src.progress import bar as progress_bar
  check_writable(args.parser, "--json", args.json)
  gpu = jax.default_backend() == "gpu"
  shape = tuple(int(s) for s in (args.shape or (GPU_SHAPE if gpu else CPU_SHAPE)).split(","))
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
  ms = [int(m) for m in (args.ms or (GPU_MS if gpu else CPU_MS)).split(",") if m.strip()]
  shapes_arg = args.matmul_shapes or (GPU_SHAPES if gpu else CPU_SHAPES)
  mshapes = [tuple(int(v) for v in s.lower().split("x")) for s in shapes_arg.split(",")
             if s.strip()]
  ftypes = [f.strip() for f in args.format_types.split(",") if f.strip()]
  for ft in ftypes:
    formats.get_format(ft.removesuffix("+dq"))
  sweep_ms = [int(m) for m in args.sweep_matmul.split(",") if m.strip()]
  if sweep_ms and not gpu:
    print("jaxfp4 bench: --sweep-matmul times compiled Pallas kernels and needs a GPU",
          file=sys.stderr)
    return 2
  device = jax.devices()[0]
  header = (f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
            f"python {platform.python_version()}")
  result = {"device": device.device_kind, "jax": jax.__version__}
  bar = progress_bar(enabled=True, desc="bench", unit="step")
  progress = lambda s: (bar.set_postfix_str(s), bar.update())  # noqa: E731
  tables = []
  if not args.skip_quantize:
    copy_bw, rows = bench.run(shape, jnp.dtype(args.dtype), tuple(qts), (False, True), impls,
                              configs, sweep, progress=progress, quick=args.quick)
    tables.append(f"weight {shape} {args.dtype}\n" + bench.format_table(copy_bw, rows))
    result.update({"shape": shape, "dtype": args.dtype, "copy_GBps": copy_bw / 1e9,
                   "rows": [r.as_dict() for r in rows]})
  if not args.skip_matmul:
    from jaxfp4._src import bench_matmul
    from pallas_kernels._src.matmul_4bit import config as mcfg
    configs_by_m = {m: mcfg.candidate_configs(m, False) for m in sweep_ms}
    fshape = (8192, 8192) if (8192, 8192) in mshapes else mshapes[0]
    fms = [int(m) for m in args.format_ms.split(",") if m.strip()]
    copy_bw, peak, mrows = bench_matmul.run(
        mshapes, ms, formats_shape=fshape, format_ms=fms, format_types=ftypes,
        backward=not args.no_backward, configs=configs_by_m, quick=args.quick,
        progress=progress)
    tables.append("matmul_4bit, bf16 activations, weights rotated beyond the L2\n"
                  + bench_matmul.format_table(copy_bw, peak, mrows))
    result.update({"matmul_copy_GBps": copy_bw / 1e9, "bf16_TFLOPps": peak / 1e12,
                   "matmul_rows": [r.as_dict() for r in mrows]})
  bar.close()
  print(header)
  print("\n\n".join(tables))
  if args.json:
    write_text(args.json, json.dumps(result, indent=1))
  return 0
