"""SASS of a Pallas-Triton kernel without a GPU: count instructions before spending device time.

The Pallas call is lowered for CUDA on the CPU (``jax.export`` with
``platforms=["cuda"]``), its Triton IR captured, and compiled for sm_90 by the
``triton`` package (``pip install triton==3.6.0``, the version on the lent GPUs;
XLA compiles the same IR with its own copy of Triton, so counts can differ a
little: within 5% for the kernels in docs/benchmarks.md). Prints registers,
spills, and the instruction mix of each loop body.

  python tools/offline_sass.py gemv --m 1 --config block_n=16,chunks=16,num_warps=4
  python tools/offline_sass.py mma --shape 8192x8192 --m 16 --config block_n=64,chunks=2,split_k=4
  python tools/offline_sass.py gemv_t --m 4 --config block_n=8,chunks=4,prefetch=2
  python tools/offline_sass.py gemv --m 1 --layout wgmma --config block_n=16,chunks=16
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def capture_triton_ir(fn, *args) -> list[tuple[str, tuple]]:
  """(Triton IR text, grid) of every ``pallas_call`` in ``fn``, lowered for CUDA."""
  import jax
  from jax._src.pallas.triton import lowering
  from jax._src.pallas.triton import pallas_call_registration as registration

  captured = []
  original = lowering.lower_jaxpr_to_triton_module

  def capture(*a, **k):
    result = original(*a, **k)
    captured.append((result.module.operation.get_asm(enable_debug_info=False), result.grid))
    return result

  registration.lowering.lower_jaxpr_to_triton_module = capture
  try:
    jax.export.export(jax.jit(fn), platforms=["cuda"])(*args)
  except ValueError as e:  # the Triton custom call has no export guarantee; lowering is done
    if "compatibility" not in str(e):
      raise
  finally:
    registration.lowering.lower_jaxpr_to_triton_module = original
  return captured


def compile_sass(ttir: str, num_warps: int, num_stages: int) -> tuple[str, str]:
  """(SASS, resource usage) of Triton IR compiled for sm_90."""
  import triton
  from triton.backends.compiler import GPUTarget

  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "kernel.ttir")
    with open(path, "w") as f:
      f.write(ttir)
    kernel = triton.compile(path, target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    cubin = os.path.join(tmp, "kernel.cubin")
    with open(cubin, "wb") as f:
      f.write(kernel.asm["cubin"])
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    run = lambda *a: subprocess.run([os.path.join(tools, "cuobjdump"), *a, cubin],
                                    capture_output=True, text=True, check=True).stdout
    return run("-sass"), run("-res-usage")


def loop_bodies(sass: str):
  """[(instruction count, Counter of opcodes)] for each backward branch's range."""
  ins = [(int(m.group(1), 16), m.group(2)) for m in
         re.finditer(r"/\*([0-9a-f]{4})\*/\s+(.*?);", sass)]
  out = []
  for addr, text in ins:
    m = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", text)
    if m and int(m.group(1), 16) < addr:
      body = [t for a, t in ins if int(m.group(1), 16) <= a <= addr]
      ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0]
                                for t in body)
      out.append((len(body), ops))
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("kind", choices=("gemv", "mma", "gemv_t", "mma_t"),
                 help="gemv_t, mma_t: the transposed kernels, dy @ W (--m rows of dy)")
  p.add_argument("--shape", default="8192x8192", help="N x K")
  p.add_argument("--m", type=int, default=1)
  p.add_argument("--blocksize", type=int, default=64)
  p.add_argument("--layout", default="bnb", choices=("bnb", "wgmma"),
                 help="the weight's K order (WeightFormat.layout)")
  p.add_argument("--config", default="", help="LutConfig fields, e.g. block_n=16,chunks=16")
  p.add_argument("--nested", action="store_true",
                 help="double-quantized byte scales (NF4+DQ) instead of float32 ones")
  p.add_argument("--group", default="",
                 help="row counts of a weight group sharing x (e.g. 4096,1024,1024): compile "
                      "the one-launch group kernel; N of --shape is ignored")
  args = p.parse_args(argv)
  import jax
  import jax.numpy as jnp
  from jaxfp4._src import formats
  from pallas_kernels import LutConfig, PackedWeight, WeightFormat
  from pallas_kernels._src.lut_matmul.config import fit
  from pallas_kernels._src.lut_matmul.gemv import gemv_4bit_group_triton, gemv_4bit_triton
  from pallas_kernels._src.lut_matmul.mma import mma_4bit_group_triton, mma_4bit_triton

  from pallas_kernels._src.lut_matmul import gemv_t, mma_t

  n, k = (int(v) for v in args.shape.split("x"))
  bs = args.blocksize
  kw = {key: (val if key == "decode" else int(val))
        for key, val in (item.split("=") for item in args.config.split(",") if item)}
  fmt = WeightFormat(lut=tuple(formats.NF4_CODE.tolist()), blocksize=bs, layout=args.layout,
                     **(dict(scale_kind="byte", nested_blocksize=256) if args.nested else {}))

  def packed(rows):
    sd = jax.ShapeDtypeStruct
    if not args.nested:
      return PackedWeight(sd((rows, k // bs, bs // 2), jnp.uint8),
                          sd((rows, k // bs), jnp.float32))
    return PackedWeight(sd((rows, k // bs, bs // 2), jnp.uint8), sd((rows, k // bs), jnp.uint8),
                        sd((256,), jnp.float32), sd((-(-rows * k // bs // 256),), jnp.float32),
                        sd((1,), jnp.float32))

  w = packed(n)
  if args.kind in ("gemv_t", "mma_t"):
    dy = jax.ShapeDtypeStruct((args.m, n), jnp.bfloat16)
    # --config overrides fields of the kernel's own default config
    if args.kind == "gemv_t":
      cfg = gemv_t.fit_config(dataclasses.replace(gemv_t.default_config(args.m), **kw), n, k,
                              fmt)
      fn = lambda dy, w: gemv_t.gemv_t_4bit_triton(dy, w, fmt=fmt, config=cfg)
    else:
      cfg = mma_t.fit_config(dataclasses.replace(mma_t.DEFAULT_CONFIG, **kw), args.m, n, k, fmt)
      fn = lambda dy, w: mma_t.mma_t_4bit_triton(dy, w, fmt=fmt, config=cfg)
    _report(capture_triton_ir(fn, dy, w), cfg)
    return 0
  cfg = fit(LutConfig(kind=args.kind, **kw), args.m, n, k // min(bs, 64))
  x = jax.ShapeDtypeStruct((args.m, k), jnp.bfloat16)
  kernel = gemv_4bit_triton if args.kind == "gemv" else mma_4bit_triton
  if args.group:
    ns = [int(v) for v in args.group.split(",")]
    cfg = fit(LutConfig(kind=args.kind, **kw), args.m, sum(ns), k // min(bs, 64))
    w = [packed(gn) for gn in ns]
    kernel = gemv_4bit_group_triton if args.kind == "gemv" else mma_4bit_group_triton
  _report(capture_triton_ir(lambda x, w: kernel(x, w, fmt=fmt, config=cfg), x, w), cfg)
  return 0


def _report(captured, cfg) -> None:
  for ttir, grid in captured:
    sass, usage = compile_sass(ttir, cfg.num_warps, cfg.num_stages)
    print(cfg.name(), "grid", grid)
    print(" ".join(line.strip() for line in usage.splitlines() if "REG" in line))
    total = len(re.findall(r"/\*[0-9a-f]{4}\*/\s+(.*?);", sass))
    print(f"kernel: {total} instructions")
    for count, ops in loop_bodies(sass):
      print(f"loop body: {count} instructions", dict(ops.most_common(20)))


if __name__ == "__main__":
  raise SystemExit(main())
