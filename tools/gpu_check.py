"""Compares jaxfp4 with bitsandbytes' golden bytes on every available backend.

    python tools/gpu_check.py --golden tests/data/bnb_golden.npz --json out.json

For each backend (the GPU, then the host CPU) and each implementation (the
XLA path and the Pallas kernel where it applies) it counts mismatching packed
bytes, nibbles, absmax values, nested codes and dequantized values against the
file, and prints one table. A kernel check on fresh random inputs (kernel vs
reference) runs on the GPU too.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

import numpy as np

sys.path.insert(0, ".")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxfp4  # noqa: E402
from jaxfp4._src import double_quant  # noqa: E402
from tools import golden_inputs  # noqa: E402

DT = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def nibble_mismatch(a: np.ndarray, b: np.ndarray) -> int:
  return int(np.sum((a >> 4) != (b >> 4)) + np.sum((a & 15) != (b & 15)))


def out_bits(y) -> np.ndarray:
  a = np.asarray(jax.device_get(y))
  return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32).reshape(-1)


_NAN_MASKS = {"float32": (0x7F800000, 0x7FFFFF), "bfloat16": (0x7F80, 0x7F),
              "float16": (0x7C00, 0x3FF)}


def _is_nan_bits(b: np.ndarray, dtype: str) -> np.ndarray:
  exp, man = _NAN_MASKS[dtype]
  return ((b & exp) == exp) & ((b & man) != 0)


def state_from_golden(g, tag, shape, dtype, qt, bs, nested):
  if not nested:
    return jaxfp4.QuantState(absmax=jnp.asarray(g[f"{tag}/absmax"]), shape=shape,
                             dtype=jnp.dtype(dtype), blocksize=bs, quant_type=qt,
                             code=jaxfp4._src.formats.get_format(qt).code)
  return jaxfp4.QuantState(
      absmax=jnp.asarray(g[f"{tag}/nested/codes"]), shape=shape, dtype=jnp.dtype(dtype),
      blocksize=bs, quant_type=qt, code=jaxfp4._src.formats.get_format(qt).code,
      offset=jnp.asarray(g[f"{tag}/nested/offset"]),
      state2=jaxfp4.NestedState(absmax=jnp.asarray(g[f"{tag}/nested/absmax2"])))


def check_backend(g, device, impls) -> list[dict]:
  rows = []
  with jax.default_device(device):
    for name, make in golden_inputs.TENSORS.items():
      base = make()
      for dtype in golden_inputs.DTYPES:
        x_np = golden_inputs.cast(base, dtype)
        assert golden_inputs.sha256(x_np) == str(g[f"{name}/{dtype}/sha256"]), (name, dtype)
        x = jnp.asarray(x_np)
        for qt in ("nf4", "fp4"):
          for bs in ((32, 64, 128, 256, 512, 1024, 2048, 4096) if name == "main" else (64,)):
            tag = f"{name}/{qt}/{bs}/{dtype}"
            if f"{tag}/packed" not in g:
              continue
            gp, ga = g[f"{tag}/packed"], g[f"{tag}/absmax"]
            policy = "bnb" if name == "edge" else "propagate"
            for impl in impls:
              try:
                rows.append(_check_one(g, x, name, dtype, qt, bs, tag, gp, ga, policy, impl, device))
              except Exception as e:  # a kernel that fails to lower is a result too
                rows.append(dict(backend=device.platform, impl=impl, tensor=name, qt=qt, bs=bs,
                                 dtype=dtype, n=int(x.size), error=repr(e)[:300]))
                print("ERROR", tag, impl, repr(e)[:2000])
  return rows


def _check_one(g, x, name, dtype, qt, bs, tag, gp, ga, policy, impl, device):
              p, st = jaxfp4.quantize_4bit(x, blocksize=bs, quant_type=qt,
                                           nonfinite=policy, implementation=impl)
              p = np.asarray(p).reshape(-1)
              am = np.asarray(st.absmax)
              r = dict(backend=device.platform, impl=impl, tensor=name, qt=qt, bs=bs,
                       dtype=dtype, n=int(x.size), bytes=int(np.sum(p != gp)),
                       nibbles=nibble_mismatch(p, gp),
                       absmax=int(np.sum(am.view(np.uint32) != ga.view(np.uint32))))
              # nested: codes from bnb's offset, and from ours
              off = g[f"{tag}/nested/offset"]
              codes, absmax2 = double_quant.quantize_blockwise_8bit(jnp.asarray(ga) - off)
              r["nested_codes"] = int(np.sum(np.asarray(codes) != g[f"{tag}/nested/codes"]))
              r["nested_absmax2"] = int(np.sum(np.asarray(absmax2) != g[f"{tag}/nested/absmax2"]))
              _, st2 = jaxfp4.quantize_4bit(x, blocksize=bs, quant_type=qt, nonfinite=policy,
                                            compress_statistics=True, implementation=impl)
              r["offset_ulp"] = int(abs(np.asarray(st2.offset).view(np.int32).astype(np.int64)
                                        - off.view(np.int32).astype(np.int64)))
              r["nested_codes_own_offset"] = int(np.sum(np.asarray(st2.absmax)
                                                        != g[f"{tag}/nested/codes"]))
              if f"{tag}/dequant" in g:
                for nested in (False, True):
                  key = f"{tag}/nested/dequant" if nested else f"{tag}/dequant"
                  s = state_from_golden(g, tag, x.shape, dtype, qt, bs, nested)
                  # the dequantize kernel needs whole blocks; tails use the XLA path
                  d_impl = impl if x.size % bs == 0 else None
                  y = out_bits(jaxfp4.dequantize_4bit(jnp.asarray(gp).reshape(-1, 1), s,
                                                      implementation=d_impl))
                  want = g[key]
                  nan_both = _is_nan_bits(y, dtype) & _is_nan_bits(want, dtype)
                  diff = (y != want) & ~nan_both
                  sign_mask = np.uint16(0x7FFF) if y.dtype == np.uint16 else np.uint32(0x7FFFFFFF)
                  zero_aside = diff & ~(((y & sign_mask) == 0) & ((want & sign_mask) == 0))
                  r[f"dequant{'_nested' if nested else ''}"] = int(np.sum(diff))
                  r[f"dequant{'_nested' if nested else ''}_nonzero"] = int(np.sum(zero_aside))
              return r


def kernel_vs_reference(trials: int = 20) -> list[dict]:
  """Kernel and reference on fresh random inputs of many shapes (GPU only)."""
  rows = []
  rng = np.random.default_rng()
  for t in range(trials):
    qt = jaxfp4.QUANT_TYPES[t % 5]
    fmt = jaxfp4._src.formats.get_format(qt)
    bs = fmt.default_blocksize if fmt.blocksizes[0] < 32 or qt == "mxfp4" else int(rng.choice(fmt.blocksizes))
    nb = int(rng.integers(1, 5000))
    dtype = ["float32", "bfloat16", "float16"][t % 3]
    scale = float(np.exp(rng.uniform(-8, 8)))
    x = jnp.asarray((rng.standard_normal((nb, bs)) * scale).astype(np.float32)).astype(DT[dtype])
    try:
      a = jaxfp4.quantize_4bit(x, quant_type=qt, blocksize=bs, implementation="xla")
      b = jaxfp4.quantize_4bit(x, quant_type=qt, blocksize=bs, implementation="pallas")
      ya = out_bits(jaxfp4.dequantize_4bit(*a, implementation="xla"))
      yb = out_bits(jaxfp4.dequantize_4bit(*a, implementation="pallas"))
    except Exception as e:
      rows.append(dict(qt=qt, bs=bs, nb=nb, dtype=dtype, packed=-1, absmax=-1, dequant=-1,
                       error=repr(e)[:300]))
      continue
    rows.append(dict(qt=qt, bs=bs, nb=nb, dtype=dtype,
                     packed=int(np.sum(np.asarray(a[0]) != np.asarray(b[0]))),
                     absmax=int(np.sum(np.asarray(a[1].absmax).view(np.uint8)
                                       != np.asarray(b[1].absmax).view(np.uint8))),
                     dequant=int(np.sum(ya != yb))))
  return rows


def probes() -> dict:
  """How XLA on this backend rounds float32 reciprocal and division."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal(1 << 22).astype(np.float32) * np.float32(3)
  b = (rng.standard_normal(1 << 22).astype(np.float32) + np.float32(0.1))
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  recip = np.asarray(jax.jit(lambda v: 1.0 / v)(jb))
  div = np.asarray(jax.jit(lambda u, v: u / v)(ja, jb))
  return {"n": int(a.size),
          "reciprocal_not_correctly_rounded": int(np.sum(recip != np.float32(1) / b)),
          "division_not_correctly_rounded": int(np.sum(div != a / b))}


def summarize(rows: list[dict]) -> str:
  keys = ["bytes", "nibbles", "absmax", "nested_codes", "nested_absmax2", "offset_ulp",
          "nested_codes_own_offset", "dequant", "dequant_nonzero", "dequant_nested",
          "dequant_nested_nonzero"]
  groups = collections.defaultdict(lambda: collections.Counter())
  for r in rows:
    k = (r["backend"], r["impl"], r["tensor"], r["qt"], r["dtype"])
    for c in keys:
      if c == "offset_ulp":
        groups[k][c] = max(groups[k][c], r.get(c, 0))
      else:
        groups[k][c] += r.get(c, 0)
    groups[k]["n"] += r["n"]
    groups[k]["errors"] += int("error" in r)
    groups[k]["configs"] += 1
  keys = keys + ["errors"]
  head = f"{'backend':<5}{'impl':<7}{'tensor':<6}{'qt':<4}{'dtype':<9}{'cfgs':>5}" + "".join(
      f"{c[:12]:>13}" for c in keys)
  lines = [head]
  for k, c in sorted(groups.items()):
    lines.append(f"{k[0]:<5}{k[1]:<7}{k[2]:<6}{k[3]:<4}{k[4]:<9}{c['configs']:>5}"
                 + "".join(f"{c[x]:>13}" for x in keys))
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--golden", default="tests/data/bnb_golden.npz")
  ap.add_argument("--json", default=None)
  ap.add_argument("--cpu", action="store_true", help="also check the host CPU backend")
  args = ap.parse_args()
  g = dict(np.load(args.golden))
  rows = []
  gpus = [d for d in jax.devices() if d.platform == "gpu"]
  if gpus:
    rows += check_backend(g, gpus[0], ("xla", "pallas"))
  if args.cpu or not gpus:
    rows += check_backend(g, jax.devices("cpu")[0], ("xla",))
  print(summarize(rows))
  kv = kernel_vs_reference() if gpus else []
  bad = [r for r in kv if r["packed"] or r["absmax"] or r["dequant"]]
  print(f"kernel vs reference on fresh random inputs: {len(kv)} trials, {len(bad)} with differences")
  for r in bad:
    print("  ", r)
  pr = probes() if gpus else {}
  print("XLA float32 rounding on the GPU:", pr)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, "kernel_vs_reference": kv, "probes": pr}, f, indent=0)


if __name__ == "__main__":
  main()
