"""Checks that checkpoints written by jaxfp4 load in transformers + bitsandbytes.

Run on a CUDA machine with torch, transformers and bitsandbytes, after

  jaxfp4 quantize tests/data/llama_tiny/bf16 OURS_NF4 --quant-type nf4 --double-quant

and a ``jaxfp4.models.llama.save_pretrained`` directory SAVED_FP4:

  python tools/check_transformers_load.py OURS_NF4 SAVED_FP4

transformers' logits on each must equal its logits on the checkpoint
transformers itself saved (tests/data/llama_tiny/{nf4_dq,fp4}), bit for bit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaForCausalLM

TINY = Path(__file__).resolve().parent.parent / "tests" / "data" / "llama_tiny"


def logits(path, ids):
  m = LlamaForCausalLM.from_pretrained(path, device_map="cuda").eval()
  with torch.no_grad():
    return m(input_ids=ids.cuda()).logits.float().cpu().numpy()


def main(ours_nf4: str, saved_fp4: str) -> None:
  ref = np.load(TINY / "logits.npz")
  ids = torch.from_numpy(ref["input_ids"].astype(np.int64))
  for path, golden, key in ((ours_nf4, "nf4_dq", "nf4_dq_bf16"), (saved_fp4, "fp4", "fp4_bf16")):
    ours = logits(path, ids)
    theirs = logits(TINY / golden, ids)
    same = np.array_equal(ours, theirs)
    print(f"{path}: transformers+bitsandbytes logits vs its own {golden} checkpoint: "
          f"{'bit-identical' if same else 'max |diff| %.3g' % np.abs(ours - theirs).max()}; "
          f"vs recorded {key}: max |diff| {np.abs(ours - ref[key]).max():.3g}")
    assert same, path


if __name__ == "__main__":
  main(*sys.argv[1:3])
