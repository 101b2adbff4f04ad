"""Run 9: the transposed kernels (``dy @ W``, the input gradient) against the dequantize
route they would replace and JAX bf16, NF4 (+ DQ), 8 weights rotated beyond the L2: the
transposed GEMV (gemv_t) for M <= 8, the transposed tensor-core kernel (mma_t) above.
  python3 docs/measurements/run9_next/transposed_probe.py [ms] [shapes] [nf4,nf4+dq]
Each row: us per product; a config whose result leaves the bound of tests/test_lut_kernels.py's
check (float64 exact product of the weight the kernel claims to multiply) is marked WRONG.
The last lines name the fastest config per (shape, M).
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
import jaxfp4  # noqa: E402
import pallas_kernels  # noqa: E402
from jaxfp4._src import product  # noqa: E402
from pallas_kernels import LutConfig  # noqa: E402
from tests.test_lut_kernels import exact_weight, kernel_weight  # noqa: E402
from tests.test_matmul_kernels import check_close  # noqa: E402

ms = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "1,4,8,16,64,128,256").split(",")]
shapes = [tuple(int(v) for v in s.split("x")) for s in
          (sys.argv[2] if len(sys.argv) > 2 else "8192x8192,14336x4096,4096x14336").split(",")]
GEMV_T = [LutConfig(kind="gemv", block_n=bn, chunks=c, num_warps=nw, prefetch=pf)
          for bn, c, nw, pf in ((16, 4, 4, 1), (8, 4, 4, 1), (16, 2, 4, 2), (8, 8, 4, 1),
                                (16, 4, 8, 1), (8, 4, 4, 2))]
# block_n 128 with 4 warps does not compile (Triton 3.6, offline); 64-row dy tiles use wgmma.
MMA_T = [LutConfig(kind="mma", block_m=bm, block_n=bn, chunks=c, num_warps=nw, prefetch=pf)
         for bm, bn, c, nw, pf in ((64, 64, 2, 4, 1), (64, 64, 1, 4, 1), (64, 64, 2, 4, 2),
                                   (64, 128, 1, 8, 1), (128, 64, 1, 8, 1), (64, 32, 2, 4, 2))]
FORMATS = (sys.argv[3] if len(sys.argv) > 3 else "nf4,nf4+dq").split(",")
COPIES = 8
INTERPRET = jax.default_backend() != "gpu"  # a CPU run checks the script, not the speed
print(jax.devices()[0].device_kind, jax.__version__, flush=True)


def timed(fn, args_list, reps=20):
  out = jax.block_until_ready(fn(*args_list[0]))
  for a in args_list[1:]:
    jax.block_until_ready(fn(*a))
  t0 = time.perf_counter()
  for _ in range(reps):
    for a in args_list:
      o = fn(*a)
  jax.block_until_ready(o)
  return (time.perf_counter() - t0) / (reps * len(args_list)) * 1e6, out


best = {}
for n, k in shapes:
  for dq in [f == "nf4+dq" for f in FORMATS]:
    keys = jax.random.split(jax.random.key(n + k + dq), COPIES)
    wf = [jax.random.normal(kk, (n, k), jnp.bfloat16) * 0.02 for kk in keys]
    qs = [jaxfp4.quantize_4bit(w, quant_type="nf4", compress_statistics=dq) for w in wf]
    kws = [product.kernel_weight(d, s) for d, s in qs]
    wk32 = exact_weight(*kws[0])
    wk16 = kernel_weight(*kws[0], "mma", "shfl", jnp.bfloat16)
    wb = [jaxfp4.dequantize_4bit(d, s) for d, s in qs]
    name = f"{n}x{k} {'nf4+dq' if dq else 'nf4'}"
    for m in ms:
      dy = jax.random.normal(jax.random.key(m), (m, n), jnp.bfloat16)
      if not dq:
        us, _ = timed(jax.jit(lambda dy, w: jnp.dot(dy, w)), [(dy, w) for w in wb])
        print(f"{name:22s} M={m}  bf16 dy @ W            {us:7.1f} us", flush=True)
      route = jax.jit(lambda dy, d, s: product.product(dy, d, s, None, None, transpose=True))
      us, out = timed(route, [(dy, d.reshape(-1), s) for d, s in qs])  # flat bytes, as product takes
      print(f"{name:22s} M={m}  route ({product.route(m, qs[0][1], dy.dtype, None, True):10s})"
            f" {us:7.1f} us", flush=True)
      small = m <= 8
      kernel = pallas_kernels.gemv_t_4bit_triton if small else pallas_kernels.mma_t_4bit_triton
      wk = wk32 if small else wk16
      for cfg in GEMV_T if small else MMA_T:
        fn = jax.jit(lambda dy, w, fmt=kws[0][1], cfg=cfg, kernel=kernel:
                     kernel(dy, w, fmt=fmt, config=cfg, interpret=INTERPRET))
        try:
          us, out = timed(fn, [(dy, w) for w, _ in kws])
          try:
            check_close(out, dy, wk, "bfloat16", True)
            flag = ""
          except AssertionError as e:
            flag = f"WRONG {str(e)[:80]}"
          print(f"{name:22s} M={m}  {'gemv_t' if small else 'mma_t'} {cfg.name():34s} "
                f"{us:7.1f} us {flag}", flush=True)
          if not flag and us < best.get((name, m), (1e9,))[0]:
            best[(name, m)] = (us, cfg.name())
        except Exception as e:  # a config that fails to compile is reported, not fatal
          print(f"{name:22s} M={m}  {cfg.name():34s} FAILED {type(e).__name__}: "
                f"{str(e)[:200]}", flush=True)
for (name, m), (us, cfg) in best.items():
  print(f"best {name:22s} M={m}: {us:7.1f} us  {cfg}")
