"""Writes a LoRA adapter made by PEFT on the tiny NF4 Llama, and the logits PEFT computes with it.

Run in a throwaway environment with torch (CPU), transformers, bitsandbytes and peft:

  python tools/make_peft_golden.py tests/data/decoder

OUT/peft/adapter/ is PEFT's ``save_pretrained`` of a rank-4 rsLoRA adapter on
``q_proj``, ``v_proj`` and ``down_proj`` of OUT/llama/nf4 (random A and B, so
the adapter changes the logits); OUT/peft/logits.npz holds PEFT's logits on
OUT/llama's test ids: ``lora_f32`` with the base's bitsandbytes-dequantized
weights in a float32 model, ``lora_bnb`` on the bitsandbytes 4-bit base
(bfloat16 compute, CPU), and ``base_f32`` without the adapter.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import peft
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM


def dequantized_f32(base_dir: Path, quantized) -> torch.nn.Module:
  """The float32 model of ``base_dir``'s config with ``quantized``'s 4-bit weights dequantized in."""
  cfg_dir = base_dir.parent / "bf16"
  m32 = AutoModelForCausalLM.from_pretrained(cfg_dir, dtype=torch.float32).eval()
  qmods = dict(quantized.named_modules())
  with torch.no_grad():
    for name, mod in m32.named_modules():
      q = qmods.get(name)
      if isinstance(q, bnb.nn.Linear4bit):
        mod.weight.copy_(bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state).float())
  return m32


def logits(model, ids) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=ids).logits.float().numpy()


def main(out: Path) -> None:
  base_dir = out / "llama" / "nf4"
  ids = torch.from_numpy(np.load(out / "llama" / "logits.npz")["input_ids"].astype(np.int64))
  dest = out / "peft"
  if dest.exists():
    shutil.rmtree(dest)
  q = AutoModelForCausalLM.from_pretrained(base_dir, device_map="cpu").eval()
  cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0,
                   use_rslora=True, task_type="CAUSAL_LM")
  pm = get_peft_model(q, cfg)
  g = torch.Generator().manual_seed(3)
  with torch.no_grad():
    for name, p in pm.named_parameters():
      if "lora_" in name:
        p.copy_(torch.randn(p.shape, generator=g) * 0.1)
  pm.save_pretrained(dest / "adapter")
  res = {"lora_bnb": logits(pm, ids)}
  # get_peft_model wrapped q's layers in place; dequantize from a fresh copy of the base.
  m32 = dequantized_f32(base_dir, AutoModelForCausalLM.from_pretrained(base_dir, device_map="cpu").eval())
  res["base_f32"] = logits(m32, ids)
  res["lora_f32"] = logits(PeftModel.from_pretrained(m32, dest / "adapter").eval(), ids)
  np.savez_compressed(dest / "logits.npz", **res)
  (dest / "adapter" / "README.md").unlink(missing_ok=True)
  cfg_file = dest / "adapter" / "adapter_config.json"  # a path that means something on other machines
  saved = json.loads(cfg_file.read_text())
  saved["base_model_name_or_path"] = "tests/data/decoder/llama/nf4"
  cfg_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
  print(json.dumps({"peft": peft.__version__,
                    "adapter_effect_f32": float(np.abs(res["lora_f32"] - res["base_f32"]).max())}))


if __name__ == "__main__":
  main(Path(sys.argv[1]))
