"""Run 10: batch 1 lost 15% on repacked weights in the Llama-8B decode (run 9-10) while the
single-weight GEMV at M = 1 was as fast on them. This times the decode's GEMV launches as the
decode makes them: q/k/v and gate/up as one group each, o and down alone, NF4+DQ, on
bitsandbytes' bytes and repacked, JAX bf16 beside each.
  python3 docs/measurements/run10/group_probe.py 1
"""
import sys

import jax
import jax.numpy as jnp

import jaxfp4
from jaxfp4._src import bench_matmul as bm
from jaxfp4._src import quantize as q
from jaxfp4._src import repack

m = int(sys.argv[1])
groups = {"qkv": ([4096, 1024, 1024], 4096), "gate_up": ([14336, 14336], 4096),
          "o": ([4096], 4096), "down": ([4096], 14336)}
print("jax", jax.__version__, flush=True)


def group_op(x, ws):
  return jaxfp4.matmul_4bit_group(x, list(ws))


for name, (ns, k) in groups.items():
  w16 = [jax.random.normal(jax.random.key(n + i), (n, k), jnp.float32).astype(jnp.bfloat16)
         for i, n in enumerate(ns)]
  x = jax.random.normal(jax.random.key(m), (m, k), jnp.bfloat16)
  cat = jnp.concatenate(w16)
  t16 = bm._time_rotating(bm._dot_bf16, x, bm._copies(cat, 4), False)
  qs = [q.quantize_4bit(w, quant_type="nf4", compress_statistics=True) for w in w16]
  copies = bm._copies(tuple(qs), 6)
  rep = [tuple(repack.repack_4bit(p, s, layout="wgmma") for p, s in c) for c in copies]
  for _ in range(2):
    for tag, ws in (("bnb", copies), ("repacked", rep)):
      t = bm._time_rotating(group_op, x, ws, False)
      print(f"{name:<8} M={m} {tag:<9} {t * 1e6:7.1f} us  bf16 {t16 * 1e6:7.1f} us", flush=True)
