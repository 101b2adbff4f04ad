"""Run 10: the Mosaic kernel's recorded M = 16 configs against a grid (split_k x coded_slab x
late_slab) on NF4 and NF4+DQ, bitsandbytes' bytes, each shape's bf16 in the same process.
  python3 docs/measurements/run10/grid_probe.py 16 6144x4096,4096x4096,28672x4096,4096x14336
"""
import dataclasses
import functools
import itertools
import sys

import jax
import jax.numpy as jnp

from jaxfp4._src import bench_matmul as bm
from jaxfp4._src import quantize as q
from pallas_kernels._src import common
from pallas_kernels._src.lut_matmul import api as lut_api


ms = [int(s) for s in sys.argv[1].split(",")]
shapes = [tuple(int(v) for v in s.split("x")) for s in sys.argv[2].split(",")]
dev = common.device_kind()
print("device", dev, "jax", jax.__version__, flush=True)
for n, k in shapes:
  w16 = jax.random.normal(jax.random.key(n + k), (n, k), jnp.float32).astype(jnp.bfloat16)
  bf = bm._copies(w16, 4)
  for m in ms:
    x = jax.random.normal(jax.random.key(m), (m, k), jnp.bfloat16)
    t16 = bm._time_rotating(bm._dot_bf16, x, bf, False)
    print(f"{n}x{k} M={m} bf16 {t16 * 1e6:.1f} us", flush=True)
    rec = lut_api._wgmma_config(m, n, k, dev)
    for nested in (False, True):
      tag = "nf4+dq" if nested else "nf4"
      p, s = q.quantize_4bit(w16, quant_type="nf4", compress_statistics=nested)
      ws = bm._copies((p, s), 8)
      t = bm._safe_time(bm._fwd, x, ws, False)
      print(f"{n}x{k} M={m} {tag:<7}{'default':<52}{t * 1e6:8.1f} us {t16 / t:5.2f}x", flush=True)
      best = (float("inf"), None)
      for sk, coded, late in itertools.product((0, 2, 4, 8, 16), (True, False), (True, False)):
        if not nested and not coded:
          continue  # float scales ignore coded_slab
        c = dataclasses.replace(rec, split_k=sk, reduce=sk > 1 or rec.reduce, coded_slab=coded,
                                late_slab=late, slab=True)
        t = bm._safe_time(functools.partial(bm._lut_mma, config=c), x, ws, False)
        best = min(best, (t, c.name()))
        print(f"{n}x{k} M={m} {tag:<7}{c.name():<52}{t * 1e6:8.1f} us {t16 / t:5.2f}x", flush=True)
      print(f"{n}x{k} M={m} {tag:<7}BEST {best[1]} {best[0] * 1e6:.1f} us", flush=True)
