"""Probe: does XLA's GPU GEMM fusion take an NF4 decode written as elementwise jnp into the
dot's operand (no bf16 copy of the weight in HBM), and how fast is that at M >= 128?

The dequantize route writes the bf16 weight (2 bytes per weight) and the GEMM reads it back:
on an H200 (run 8) 8192 x 8192 at M = 512 took 155.9 us against bf16's 108.8, about the time
of that round trip. If XLA fuses an elementwise decode (nibble shifts, a 16-way select tree
for the table, the block scale broadcast) into its Triton GEMM, M >= 512 could approach bf16.
Variants, each jitted alone, 8 weights rotated beyond the L2, the same x:
  bf16       x @ W.T on the bf16 weight
  route      jaxfp4.matmul_4bit as dispatched
  select     decode as a select tree over the interleaved nibbles, then dot
  split      even and odd K separately (x[:, 0::2] @ W_hi.T + x[:, 1::2] @ W_lo.T): no
             interleave reshape of the weight
For each: us per product, the error against the float64 product of the dequantized weight,
and whether the optimized HLO fused the decode into the dot's fusion (the fusion that holds the
dot also holds a select).
  python3 docs/measurements/run9_next/xla_fused_probe.py [ms] [NxK]
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
import jaxfp4  # noqa: E402
from jaxfp4._src import quantize as quantize_lib  # noqa: E402

ms = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "128,512,2048").split(",")]
n, k = (int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "8192x8192").split("x"))
COPIES = 8
print(jax.devices()[0].device_kind, jax.__version__, f"{n}x{k}", flush=True)

keys = jax.random.split(jax.random.key(0), COPIES)
ws = [jax.random.normal(kk, (n, k), jnp.bfloat16) * 0.02 for kk in keys]
qs = [jaxfp4.quantize_4bit(w, quant_type="nf4") for w in ws]
lut = np.asarray(qs[0][1].format.decode_lut, np.float32)
bs = qs[0][1].blocksize


def select_table(codes):
  """lut[codes] as a balanced select tree on the code's bits (elementwise only)."""
  vals = [jnp.float32(v) for v in lut]
  for bit in range(4):
    on = ((codes >> bit) & 1) == 1
    vals = [jnp.where(on, vals[2 * i + 1], vals[2 * i]) for i in range(len(vals) // 2)]
  return vals[0]


def decode_select(data, absmax):
  b = data.reshape(n, k // 2).astype(jnp.int32)
  codes = jnp.stack([b >> 4, b & 15], axis=-1).reshape(n, k // bs, bs)
  w = select_table(codes) * absmax.reshape(n, k // bs, 1)
  return w.astype(jnp.bfloat16).reshape(n, k)


def prod_select(x, data, absmax):
  return jnp.dot(x, decode_select(data, absmax).T, preferred_element_type=jnp.float32
                 ).astype(x.dtype)


def prod_split(x, data, absmax):
  b = data.reshape(n, k // bs, bs // 2).astype(jnp.int32)
  s = absmax.reshape(n, k // bs, 1)
  hi = (select_table(b >> 4) * s).astype(jnp.bfloat16).reshape(n, k // 2)
  lo = (select_table(b & 15) * s).astype(jnp.bfloat16).reshape(n, k // 2)
  acc = jnp.dot(x[:, 0::2], hi.T, preferred_element_type=jnp.float32)
  acc += jnp.dot(x[:, 1::2], lo.T, preferred_element_type=jnp.float32)
  return acc.astype(x.dtype)


def prod_route(x, data, absmax, state):
  return jaxfp4.matmul_4bit(x, data, state)


def fused(fn, *args):
  """The dot's fusion also holds a select (the decode went into the GEMM)."""
  txt = jax.jit(fn).lower(*args).compile().as_text()
  comps, cur = {}, None
  for line in txt.splitlines():
    if line and not line.startswith(" ") and "{" in line:
      cur = line.split()[0] if not line.startswith("ENTRY") else "ENTRY"
      comps[cur] = []
    elif cur:
      comps[cur].append(line)
  return any(any(" dot(" in l for l in body) and any(" select(" in l for l in body)
             for body in comps.values())


def timed(fn, args_list, reps=20):
  outs = [jax.block_until_ready(fn(*a)) for a in args_list]
  t0 = time.perf_counter()
  for _ in range(reps):
    for a in args_list:
      o = fn(*a)
  jax.block_until_ready(o)
  return (time.perf_counter() - t0) / (reps * len(args_list)) * 1e6, outs[0]


for m in ms:
  x = (jax.random.normal(jax.random.key(m), (m, k), jnp.float32)).astype(jnp.bfloat16)
  wq = [jaxfp4.dequantize_4bit(d, s) for d, s in qs]
  exact = np.asarray(x, np.float64) @ np.asarray(wq[0], np.float64).T
  absmaxes = [quantize_lib.block_scales(s) for _, s in qs]
  rows = {
      "bf16": (jax.jit(lambda x, w: jnp.dot(x, w.T)), [(x, w) for w in wq]),
      "route": (jax.jit(prod_route), [(x, d, a, s) for (d, s), a in zip(qs, absmaxes)]),
      "select": (jax.jit(prod_select), [(x, d, a) for (d, _), a in zip(qs, absmaxes)]),
      "split": (jax.jit(prod_split), [(x, d, a) for (d, _), a in zip(qs, absmaxes)]),
  }
  for name, (fn, args) in rows.items():
    try:
      us, out = timed(fn, args)
      err = np.abs(np.asarray(out, np.float64) - exact).max() / np.abs(exact).max()
      fz = fused(fn.__wrapped__ if hasattr(fn, "__wrapped__") else fn, *args[0]) \
          if name in ("select", "split") else ""
      print(f"M={m:5d} {name:7s} {us:8.1f} us  err {err:.2e}  {'fused' if fz else '' if fz == '' else 'not fused'}",
            flush=True)
    except Exception as e:  # a variant that fails to compile is reported, not fatal
      print(f"M={m:5d} {name:7s} FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
