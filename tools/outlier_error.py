"""How much keeping a few input columns in bf16 reduces 4-bit weight error, on real weights.

  python tools/outlier_error.py MODEL.safetensors [--fractions 0.005,0.01,0.02] [--quant-types nf4,fp4]

For every 2-D float weight ``W[out, in]`` (a Linear weight) of the file, and each format: the
relative Frobenius error ``||W_hat - W|| / ||W||`` of plain 4-bit quantization (block 64) and of
``jaxfp4.quantize_4bit_with_outliers`` keeping ``fraction * in`` columns (chosen by magnitude),
plus the storage cost in bits per weight. The error of ``x @ W_hat.T`` for inputs with independent
unit-variance features equals the Frobenius error, so this is also the layer's output error on
such inputs. Prints the mean over the tensors and writes a JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math

import jax.numpy as jnp
import numpy as np

import jaxfp4
from jaxfp4.io import SafetensorsFile


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("file")
  p.add_argument("--fractions", default="0.005,0.01,0.02")
  p.add_argument("--quant-types", default="nf4,fp4")
  p.add_argument("--json", default=None)
  args = p.parse_args()
  fractions = [float(f) for f in args.fractions.split(",")]
  rows = []
  with SafetensorsFile(args.file) as f:
    names = [k for k in f.keys() if len(f.info(k).shape) == 2 and k.endswith(".weight")
             and "embedding" not in k]
    for name in names:
      w = jnp.asarray(f.get(name).astype(np.float32))
      norm = float(jnp.linalg.norm(w))
      for qt in args.quant_types.split(","):
        packed, state = jaxfp4.quantize_4bit(w, quant_type=qt, blocksize=64)
        base = float(jnp.linalg.norm(jaxfp4.dequantize_4bit(packed, state) - w)) / norm
        bits = 8 * (packed.nbytes + state.nbytes()) / w.size
        rows.append(dict(tensor=name, quant_type=qt, columns=0, fraction=0.0, rel_error=base, bits=bits))
        for frac in fractions:
          c = max(1, round(frac * w.shape[1]))
          packed, state, cols = jaxfp4.quantize_4bit_with_outliers(
              w, num_columns=c, quant_type=qt, blocksize=64, outlier_dtype=jnp.bfloat16)
          w_hat = jaxfp4.dequantize_4bit_with_outliers(packed, state, cols)
          err = float(jnp.linalg.norm(w_hat.astype(jnp.float32) - w)) / norm
          bits = 8 * (packed.nbytes + state.nbytes() + cols.nbytes()) / w.size
          rows.append(dict(tensor=name, quant_type=qt, columns=c, fraction=frac, rel_error=err, bits=bits))
  print(f"{len(names)} weights from {args.file}")
  print(f"{'format':<6} {'kept columns':>13} {'mean rel. error':>16} {'vs plain':>9} {'bits/weight':>12}")
  for qt in args.quant_types.split(","):
    plain = np.mean([r["rel_error"] for r in rows if r["quant_type"] == qt and r["columns"] == 0])
    for frac in [0.0] + fractions:
      sel = [r for r in rows if r["quant_type"] == qt and r["fraction"] == frac]
      err = float(np.mean([r["rel_error"] for r in sel]))
      label = "none" if frac == 0 else f"{100 * frac:g}%"
      print(f"{qt:<6} {label:>13} {err:>16.5f} {err / plain:>8.3f}x {np.mean([r['bits'] for r in sel]):>12.3f}")
  if args.json:
    with open(args.json, "x") as fh:
      json.dump(rows, fh, indent=1)
  assert all(math.isfinite(r["rel_error"]) for r in rows)


if __name__ == "__main__":
  main()
