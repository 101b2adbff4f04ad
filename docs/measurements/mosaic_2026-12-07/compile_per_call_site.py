"""Does XLA compile a Mosaic kernel once per distinct kernel, or once per call site?

Prepared for the next GPU session; not run yet.

Times the first call (trace + compile + run) of a jitted function with 1 and with 24 calls
of the same Mosaic kernel on the same weight shape; a per-call-site compile shows as a
first-call time that grows with the number of calls.

  python3 docs/measurements/mosaic_2026-12-07/compile_per_call_site.py
"""
import os
import sys
import time

sys.path.insert(0, os.getcwd())
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tests.test_wgmma_kernel import make_weight  # noqa: E402
from pallas_kernels._src.lut_matmul import wgmma  # noqa: E402

w, fmt = make_weight(4096, 4096, 64, "float", seed=1)
x = jnp.ones((16, 4096), jnp.bfloat16)
for calls in (1, 24):
  cfg = wgmma.WgmmaConfig(reduce=True, steps=3 + (calls == 24))  # a kernel not seen before

  def f(x, w):
    for _ in range(calls):
      x = wgmma.wgmma_4bit(x, w, fmt=fmt, config=cfg) * 1e-2
    return x

  t0 = time.perf_counter()
  lowered = jax.jit(f).lower(x, w)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  jax.block_until_ready(compiled(x, w))
  t3 = time.perf_counter()
  print(f"{calls:3d} calls: lower {t1 - t0:.2f} s, compile {t2 - t1:.2f} s, first run {t3 - t2:.2f} s",
        flush=True)
