"""Run 7, third call: is the slower Llama-3.1-8B decode of run 7 (NF4 + DQ, batch 1: 3.33 ms
per step against run 6's 3.00; bf16 6.87 against 6.86) the jitted kernel launches? Times the
decode with the launches as committed and with the jit wrappers removed (each launch traced
at its call site, as in run 6), same process, bf16 first.
  python3 docs/measurements/run7_2026-12-07/jit_ab.py [batches]
"""
import sys
import time

import jax

sys.path.insert(0, ".")
from jaxfp4.models import llama  # noqa: E402
from pallas_kernels._src.lut_matmul import gemv, mma, wgmma  # noqa: E402
from tools import bench_llama  # noqa: E402

batches = [int(b) for b in (sys.argv[1] if len(sys.argv) > 1 else "1").split(",")]
cfg = llama.LlamaConfig.llama_8b()
print(jax.devices()[0].device_kind, jax.__version__, flush=True)
jitted = (gemv._launch, mma._launch, wgmma._partials)
for variant, unwrap in (("nf4_dq", True), ("nf4_dq", False), ("bf16", False)):
  jax.clear_caches()  # else the decode loop's executable is reused across variants
  gemv._launch, mma._launch, wgmma._partials = (
      tuple(f.__wrapped__ for f in jitted) if unwrap else jitted)
  t0 = time.perf_counter()
  model = bench_llama.build(cfg, variant)
  for b in batches:
    secs, first = bench_llama.bench_decode(model, b, 128, 64, 3)
    print(f"{variant:7s} launches {'traced per site' if unwrap else 'jitted':15s} batch {b:2d}: "
          f"{1e3 * secs / 63:.3f} ms/step (first call {first:.1f} s)", flush=True)
  del model
