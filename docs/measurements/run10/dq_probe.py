"""Run 10: why NF4+DQ's Mosaic product is slower than NF4's at M = 16 (run 9: 45.6 against
31.1 us on 8192 x 8192). For each Llama-8B shape and 8192 x 8192: JAX bf16, the default
product on NF4 and NF4+DQ (bitsandbytes' bytes and repacked), and the recorded Mosaic config
forced with variants (coded_slab off: XLA decodes the byte codes before each product;
split_k changed) on NF4+DQ.
  python3 docs/measurements/run10/dq_probe.py 16 8192x8192,6144x4096,28672x4096,4096x14336
"""
import dataclasses
import functools
import sys

import jax
import jax.numpy as jnp

from jaxfp4._src import bench_matmul as bm
from jaxfp4._src import quantize as q
from jaxfp4._src import repack
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
    for nested in (False, True):
      tag = "nf4+dq" if nested else "nf4"
      p, s = q.quantize_4bit(w16, quant_type="nf4", compress_statistics=nested)
      ws = bm._copies((p, s), 8)
      rows = [("default", bm._fwd, ws)]
      if repack.can_repack(p, s, "wgmma"):
        rows.append(("default repacked", bm._fwd,
                     [repack.repack_4bit(a, b, layout="wgmma") for a, b in ws]))
      if lut_api.use_wgmma(m, n, k, bm.product_lib.kernel_weight(q.check_packed(p, s), s)[1],
                           jnp.bfloat16, dev):
        cfg = lut_api._wgmma_config(m, n, k, dev)
        variants = {"recorded": cfg,
                    "coded off": dataclasses.replace(cfg, coded_slab=False),
                    "late off": dataclasses.replace(cfg, late_slab=False),
                    "split 0": dataclasses.replace(cfg, split_k=0),
                    "split 4": dataclasses.replace(cfg, split_k=4, reduce=True),
                    "split 8": dataclasses.replace(cfg, split_k=8, reduce=True)}
        for name, c in variants.items():
          op = functools.partial(bm._lut_mma, config=c)
          rows.append((f"cfg {name} {c.name()}", op, ws))
      for name, op, wl in rows:
        t = bm._safe_time(op, x, wl, False)
        print(f"{n}x{k} M={m} {tag:<7}{name:<58}{t * 1e6:8.1f} us  {t16 / t:5.2f}x", flush=True)
