"""Operations per weight in the Mosaic GPU kernel's emitted IR (no GPU needed).

Lowers ``pallas_kernels.wgmma_4bit`` for CUDA on the CPU, keeps the Mosaic module Pallas
builds and counts the decode's operations in it, per weight and thread. The module holds one
pipeline step's body, so a count is per step; a few come from outside the loop (the table
load, index arithmetic). These are operations before ptxas, not SASS instructions: the
compiled kernel needs a GPU (or Mosaic's CUDA compiler, which ships only with the GPU plugin).

  python3 tools/wgmma_ir_counts.py --tile-k 128 --sub 1
"""

from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax._src.pallas.mosaic_gpu import lowering as mosaic_lowering  # noqa: E402

from pallas_kernels import PackedWeight, WeightFormat  # noqa: E402
from pallas_kernels._src.lut_matmul import wgmma  # noqa: E402

PATTERNS = {
    "warp shuffle (table)": r"shfl\.sync\.idx",
    "cvt pack (2 weights)": r"cvt\.rn\.(bf|f)16x2",
    "float multiply (scale)": r"arith\.mulf",
    "shift (next code)": r"arith\.shrui",
    "wgmma": r"wgmma\.mma_async",
    "loads": r"vector\.load|memref\.load|llvm\.load",
}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tile-k", type=int, default=128)
  ap.add_argument("--sub", type=int, default=1)
  ap.add_argument("--slab", action="store_true")
  ap.add_argument("--m", type=int, default=16)
  args = ap.parse_args()
  captured = []
  original = mosaic_lowering.lower_jaxpr_to_module

  def keep(*a, **k):
    result = original(*a, **k)
    captured.append(result.module)
    return result

  mosaic_lowering.lower_jaxpr_to_module = keep
  n, k = 64 * args.sub * 16, 4096
  fmt = WeightFormat(lut=tuple(float(i) for i in range(16)), blocksize=64)
  w = PackedWeight(jax.ShapeDtypeStruct((n, k // 64, 32), jnp.uint8),
                   jax.ShapeDtypeStruct((n, k // 64), jnp.float32))
  cfg = wgmma.WgmmaConfig(tile_k=args.tile_k, sub=args.sub, slab=args.slab)
  f = jax.jit(lambda x, w: wgmma.wgmma_4bit(x, w, fmt=fmt, config=cfg))
  f.trace(jax.ShapeDtypeStruct((args.m, k), jnp.bfloat16), w).lower(lowering_platforms=("cuda",))
  text = str(captured[-1])
  per_thread = 64 * args.sub * args.tile_k // 128  # weights per thread per pipeline step
  print(f"jax {jax.__version__}, {cfg.name()}: {per_thread} weights per thread per step")
  for name, pattern in PATTERNS.items():
    count = len(re.findall(pattern, text))
    print(f"  {name:24s} {count:5d} in the module, {count / per_thread:6.3f} per weight")


if __name__ == "__main__":
  main()
