"""Checks that checkpoints written by ``quantize_pretrained`` (GPTQ, clip, HQQ) load in transformers + bitsandbytes.

Run on a CUDA machine with torch, transformers, bitsandbytes and jaxfp4, e.g. after

  jaxfp4 quantize tests/data/llama_tiny/bf16 OUT --method gptq --calibration ids.npy
  python tools/bench_gptq.py --out-dir B        # writes B/gptq, B/hqq, ... as well

  python tools/check_gptq_transformers.py OUT [B/gptq B/hqq ...]

For each directory it checks, and prints:
  1. every 4-bit weight that bitsandbytes dequantizes (``bnb.functional.dequantize_4bit``
     on the GPU) equals jaxfp4's ``dequantize_4bit`` of the same tensors, bit for bit;
  2. transformers' logits on random token ids agree with jaxfp4's
     (``jaxfp4.models.decoder.from_pretrained``), both in the checkpoint's compute
     dtype: max |diff| within ``--rtol`` of the largest |logit|, and the same
     argmax on at least ``--min-argmax`` of the positions.
Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def check_weights(path: Path, device: str) -> tuple[int, list[str]]:
  """Dequantizes every bitsandbytes group with bitsandbytes and jaxfp4; returns (count, mismatching names)."""
  import bitsandbytes.functional as bf
  import jax.numpy as jnp
  import torch
  from bitsandbytes.functional import QuantState as BnbState

  import jaxfp4
  import jaxfp4.io

  bad = []
  with jaxfp4.io.Checkpoint(path) as ckpt:
    names = sorted(ckpt.quantized_weights())
    for name in names:
      packed, state = ckpt.get_4bit(name)
      ours = np.asarray(jaxfp4.dequantize_4bit(jnp.asarray(packed), state).astype(jnp.float32))
      group = {k[len(name) + 1:]: torch.from_numpy(np.asarray(v)).to(device) for k, v in
               ((k, ckpt.get(k)) for k in ckpt.keys() if k.startswith(name + ".") and k != name)}
      qs = BnbState.from_dict(group, device=torch.device(device))
      theirs = bf.dequantize_4bit(torch.from_numpy(np.asarray(packed)).to(device), qs).float().cpu().numpy()
      if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
        bad.append(name)
  return len(names), bad


def logits_transformers(path: Path, ids: np.ndarray, device: str) -> np.ndarray:
  import torch
  from transformers import AutoModelForCausalLM
  m = AutoModelForCausalLM.from_pretrained(path, device_map=device).eval()
  if device == "cpu":
    # bitsandbytes 0.50's AVX512-bf16 CPU path repacks each weight in tiles of 32
    # output rows and asserts N % 32 == 0 (the tiny test Llama's MLP has N = 344);
    # its generic CPU path (dequantize, then matmul) has no such limit.
    for mod in m.modules():
      if hasattr(mod, "support_avx512bf16_for_cpu"):
        mod.support_avx512bf16_for_cpu = False
  with torch.no_grad():
    return m(input_ids=torch.from_numpy(ids.astype(np.int64)).to(device)).logits.float().cpu().numpy()


def logits_jaxfp4(path: Path, ids: np.ndarray) -> np.ndarray:
  import jax.numpy as jnp
  from jaxfp4.models import decoder
  model = decoder.from_pretrained(path, progress=False)  # compute dtype: the checkpoint's bnb_4bit_compute_dtype
  return np.asarray(model(jnp.asarray(ids, jnp.int32))[0].astype(jnp.float32))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("dirs", nargs="+", type=Path, help="checkpoint directories written by jaxfp4")
  p.add_argument("--device", default="cuda",
                 help="torch device for bitsandbytes and transformers (cuda, or cpu: bitsandbytes' CPU backend)")
  p.add_argument("--seq-len", type=int, default=32)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--rtol", type=float, default=0.02,
                 help="max |diff| / max |logit| allowed (default 0.02: bf16 compute; measured up to 0.0107 on the tiny Llama, RTN alike)")
  p.add_argument("--min-argmax", type=float, default=0.95,
                 help="fraction of positions with the same argmax (default 0.95: near-ties flip in bf16; measured 0.969-1.0)")
  args = p.parse_args(argv)
  import json
  failed = 0
  for d in args.dirs:
    cfg = json.loads((d / "config.json").read_text())
    if "quantization_config" not in cfg:
      print(f"FAIL {d}: config.json has no quantization_config (not a 4-bit checkpoint)")
      failed += 1
      continue
    ids = np.random.default_rng(0).integers(0, cfg["vocab_size"], (args.batch, args.seq_len))
    n, bad = check_weights(d, args.device)
    ok_w = not bad
    print(f"{'ok  ' if ok_w else 'FAIL'} {d}: {n - len(bad)}/{n} 4-bit weights dequantize bit-identically in "
          f"bitsandbytes and jaxfp4{'' if ok_w else ' (differ: ' + ', '.join(bad[:4]) + ')'}")
    theirs = logits_transformers(d, ids, args.device)
    ours = logits_jaxfp4(d, ids)
    rel = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))
    agree = float(np.mean(ours.argmax(-1) == theirs.argmax(-1)))
    ok_l = rel <= args.rtol and agree >= args.min_argmax
    print(f"{'ok  ' if ok_l else 'FAIL'} {d}: logits [{args.batch}, {args.seq_len}, {theirs.shape[-1]}] in "
          f"{cfg['quantization_config'].get('bnb_4bit_compute_dtype')}: max |diff| / max |logit| = {rel:.3g} "
          f"(limit {args.rtol}), argmax agreement {agree:.3f} (limit {args.min_argmax})")
    failed += (not ok_w) + (not ok_l)
  print("PASS" if not failed else f"FAIL: {failed} check(s) failed")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
