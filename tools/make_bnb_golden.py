"""Writes tests/data/bnb_golden.npz with bitsandbytes' own CUDA kernels.

Needs a CUDA GPU, torch and bitsandbytes (0.50.2 for the committed file):

    python tools/make_bnb_golden.py --out tests/data/bnb_golden.npz

For every quant_type (nf4, fp4) x blocksize (32..4096) x dtype (float32,
bfloat16, float16) on the ``main`` tensor, and at blocksize 64 on the 1M-weight
``large`` tensor, it stores what ``bitsandbytes.functional.quantize_4bit``
returns (packed bytes, float32 absmax; with ``compress_statistics=True`` the
uint8 codes, offset and nested absmax) and what ``dequantize_4bit`` returns for
both states. The ``edge`` tensor (NaN, Inf, subnormals) is stored for nf4/fp4
at blocksize 64. Inputs are not stored: ``tools/golden_inputs.py`` rebuilds
them bit for bit, checked against the SHA-256 recorded here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

sys.path.insert(0, ".")
from tools import golden_inputs  # noqa: E402

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def _torch_input(x: np.ndarray, dtype: str):
  import torch
  tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
  raw = np.ascontiguousarray(x).view(np.uint8 if dtype == "float32" else np.uint8)
  t = torch.frombuffer(bytearray(raw.tobytes()), dtype=torch.uint8).view(tdt)
  return t.cuda()


def _np(t) -> np.ndarray:
  import torch
  t = t.detach().contiguous().cpu()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(np.uint16)
  return t.numpy()


def _bits(t) -> np.ndarray:
  """Output values as raw bits (uint16/uint32), so -0.0 and NaN survive exactly."""
  a = _np(t)
  return a.view(np.uint16 if a.itemsize == 2 else np.uint32)


def record(out: dict, tag: str, x: np.ndarray, dtype: str, quant_type: str, blocksize: int,
           dequant: bool) -> None:
  import bitsandbytes.functional as F
  t = _torch_input(x, dtype)
  packed, st = F.quantize_4bit(t, blocksize=blocksize, compress_statistics=False,
                               quant_type=quant_type)
  out[f"{tag}/packed"] = _np(packed).reshape(-1)
  out[f"{tag}/absmax"] = _np(st.absmax)
  if dequant:
    out[f"{tag}/dequant"] = _bits(F.dequantize_4bit(packed, st))
  packed2, st2 = F.quantize_4bit(t, blocksize=blocksize, compress_statistics=True,
                                 quant_type=quant_type)
  assert np.array_equal(_np(packed2).reshape(-1), out[f"{tag}/packed"])
  out[f"{tag}/nested/codes"] = _np(st2.absmax)
  out[f"{tag}/nested/offset"] = np.asarray(_np(st2.offset), np.float32).reshape(())
  out[f"{tag}/nested/absmax2"] = _np(st2.state2.absmax)
  if dequant:
    out[f"{tag}/nested/dequant"] = _bits(F.dequantize_4bit(packed2, st2))


def timings(out: dict) -> dict:
  """bitsandbytes quantize/dequantize of an 8192 x 8192 bf16 matrix (CUDA events)."""
  import torch
  import bitsandbytes.functional as F
  res = {}
  w = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
  for qt in ("nf4", "fp4"):
    for nested in (False, True):
      q = lambda: F.quantize_4bit(w, blocksize=64, quant_type=qt, compress_statistics=nested)
      packed, st = q()
      d = lambda: F.dequantize_4bit(packed, st)
      for name, fn in (("quantize", q), ("dequantize", d)):
        for _ in range(5):
          fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(30):
          a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
          a.record()
          fn()
          b.record()
          torch.cuda.synchronize()
          times.append(a.elapsed_time(b) * 1e3)
        res[f"{name}/{qt}/nested={nested}"] = float(np.median(times))
  return res


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="tests/data/bnb_golden.npz")
  parser.add_argument("--timings", default=None, help="also write bnb timings (JSON) here")
  args = parser.parse_args()
  import bitsandbytes
  import torch
  out: dict[str, np.ndarray] = {}
  t0 = time.time()
  for name, make in golden_inputs.TENSORS.items():
    base = make()
    for dtype in golden_inputs.DTYPES:
      x = golden_inputs.cast(base, dtype)
      out[f"{name}/{dtype}/sha256"] = np.array(golden_inputs.sha256(x))
      for qt in ("nf4", "fp4"):
        sizes = BLOCKSIZES if name == "main" else (64,)
        for bs in sizes:
          record(out, f"{name}/{qt}/{bs}/{dtype}", x, dtype, qt, bs, dequant=name != "large")
  # bitsandbytes' own as_dict(packed=True) of two states, for the key/JSON format
  import bitsandbytes.functional as F
  w = _torch_input(golden_inputs.cast(golden_inputs.main_tensor()[:4096 * 4], "bfloat16"),
                   "bfloat16").view(64, 256)
  for qt, nested in (("nf4", True), ("fp4", False)):
    _, st = F.quantize_4bit(w, blocksize=64, quant_type=qt, compress_statistics=nested)
    for k, v in st.as_dict(packed=True).items():
      out[f"asdict/{qt}/{nested}/{k}"] = _np(v)
  out["meta"] = np.array(json.dumps({
      "bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__,
      "device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d")}))
  np.savez_compressed(args.out, **out)
  print(f"wrote {len(out)} arrays to {args.out} in {time.time() - t0:.1f}s")
  if args.timings:
    res = timings(out)
    with open(args.timings, "w") as f:
      json.dump(res, f, indent=1)
    for k, v in res.items():
      print(f"bnb {k}: {v:.1f} us")


if __name__ == "__main__":
  main()
