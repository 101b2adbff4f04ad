"""Writes tiny checkpoints of every decoder family and transformers' logits for them.

Run in a throwaway environment with torch (CPU is enough), transformers and
bitsandbytes (never jaxfp4 dependencies):

  python tools/make_decoder_golden.py tests/data/decoder

For each family OUT/<model_type>/ gets ``bf16/`` (a random model saved by
``save_pretrained``), ``nf4/``, ``nf4_dq/`` and ``fp4/`` (the same model
quantized by bitsandbytes on load and saved again, so the 4-bit tensors are
bitsandbytes' own bytes) and ``logits.npz``: transformers' logits on fixed ids
for the dense model in float32 and bfloat16, and for each 4-bit checkpoint in
float32 (bitsandbytes' dequantized weights in the float32 model, i.e. what
``Linear4bit`` computes with a float32 compute dtype). bitsandbytes' CPU
backend rounds FP4 ties differently from its CUDA kernels; jaxfp4 loads the
bytes as written, so that changes which checkpoint is tested, not the check.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

# hidden 64, 2 layers, vocab 128: each family's checkpoints stay ~0.3 MB.
BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
WINDOW = 6  # shorter than the 20 test positions, so the sliding layers' masks matter

FAMILIES = {
    "llama": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                  rope_theta=50000.0, attention_bias=True),
    "mistral": dict(sliding_window=WINDOW),
    "qwen2": dict(tie_word_embeddings=True, use_sliding_window=False),
    "qwen3": dict(rope_theta=1e6),
    "gemma": dict(hidden_act="gelu_pytorch_tanh"),
    "gemma2": dict(sliding_window=WINDOW, query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                   final_logit_softcapping=3.0),
    "gemma3_text": dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"],
                        rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_theta=1e6,
                        rope_local_base_freq=1e4, query_pre_attn_scalar=16),
    "phi3": dict(sliding_window=WINDOW, head_dim=None),
}
QUANT = {"nf4": ("nf4", False), "nf4_dq": ("nf4", True), "fp4": ("fp4", False)}


def randomize(model, seed: int) -> None:
  """Random weights of a size that makes every module matter (norms and biases included)."""
  g = torch.Generator().manual_seed(seed)
  gemma = model.config.model_type.startswith("gemma")
  with torch.no_grad():
    for name, p in model.named_parameters():
      r = torch.randn(p.shape, generator=g)
      if p.ndim == 2:
        p.copy_(r * 0.08)
      elif "norm" in name:  # Gemma scales by 1 + w
        p.copy_(r * 0.1 + (0.0 if gemma else 1.0))
      else:
        p.copy_(r * 0.05)


def logits(model, ids) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=ids).logits.float().numpy()


def make(out: Path, model_type: str, extra: dict, ids: torch.Tensor) -> dict:
  fam_dir = out / model_type
  if fam_dir.exists():
    shutil.rmtree(fam_dir)
  kw = {**BASE, **extra}
  if kw.get("head_dim") is None:
    kw.pop("head_dim")
  cfg = AutoConfig.for_model(model_type, **kw)
  torch.manual_seed(0)
  model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
  randomize(model, seed=len(model_type))
  model.save_pretrained(fam_dir / "bf16")
  res = {"input_ids": ids.numpy().astype(np.int32)}
  ref32 = AutoModelForCausalLM.from_pretrained(fam_dir / "bf16", dtype=torch.float32).eval()
  res["bf16_f32"] = logits(ref32, ids)
  ref16 = AutoModelForCausalLM.from_pretrained(fam_dir / "bf16", dtype=torch.bfloat16).eval()
  res["bf16_bf16"] = logits(ref16, ids)
  for name, (qt, dq) in QUANT.items():
    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qt, bnb_4bit_use_double_quant=dq,
                            bnb_4bit_compute_dtype=torch.bfloat16)
    qm = AutoModelForCausalLM.from_pretrained(fam_dir / "bf16", dtype=torch.bfloat16,
                                              quantization_config=qc, device_map="cpu").eval()
    qm.save_pretrained(fam_dir / name)
    # float32 semantics: bitsandbytes' dequantized weights in the float32 model.
    m32 = AutoModelForCausalLM.from_pretrained(fam_dir / "bf16", dtype=torch.float32).eval()
    qmods = dict(qm.named_modules())
    n = 0
    with torch.no_grad():
      for mname, mod in m32.named_modules():
        q = qmods.get(mname)
        if isinstance(q, bnb.nn.Linear4bit):
          mod.weight.copy_(bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state).float())
          n += 1
    assert n >= 4 * cfg.num_hidden_layers, (model_type, n)
    res[f"{name}_f32"] = logits(m32, ids)
  for d in ("bf16", *QUANT):
    (fam_dir / d / "generation_config.json").unlink(missing_ok=True)
  np.savez_compressed(fam_dir / "logits.npz", **res)
  return {k: float(np.abs(v).max()) for k, v in res.items() if k != "input_ids"}


def main(out: Path, only: list[str]) -> None:
  out.mkdir(parents=True, exist_ok=True)
  ids = torch.randint(3, BASE["vocab_size"], (1, 20), generator=torch.Generator().manual_seed(1))
  summary = {}
  for model_type, extra in FAMILIES.items():
    if not only or model_type in only:
      summary[model_type] = make(out, model_type, extra, ids)
      print(model_type, summary[model_type], flush=True)
  versions = dict(torch=torch.__version__, transformers=transformers.__version__,
                  bitsandbytes=bnb.__version__, device="cpu")
  (out / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
  print(json.dumps(versions))


if __name__ == "__main__":
  main(Path(sys.argv[1]), sys.argv[2:])
