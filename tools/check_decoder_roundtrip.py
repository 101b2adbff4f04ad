"""Checks that what jaxfp4 writes loads back in transformers / PEFT with the same logits.

Two steps, two environments:

  python tools/check_decoder_roundtrip.py save OUT     # jaxfp4's environment
  python tools/check_decoder_roundtrip.py check OUT    # torch + transformers + bitsandbytes + peft (CPU)

``save`` loads every family's golden checkpoints (tests/data/decoder/<family>/
{bf16,nf4_dq}) with jaxfp4 and writes them again with ``save_pretrained``
(sharded: ``max_shard_size="40KB"``); it also gives the NF4 Llama a rank-4
adapter on q/v/down_proj with random A and B, writes it with ``save_adapters``
and records jaxfp4's float32 logits. ``check`` loads each saved directory in
transformers and compares its logits with transformers' logits on the
directory transformers itself saved, and loads the adapter with
``PeftModel.from_pretrained`` on the bitsandbytes 4-bit base and on the float32
dequantized base, comparing with jaxfp4's logits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "decoder"
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")
VARIANTS = ("bf16", "nf4_dq")


def save(out: Path) -> None:
  import jax.numpy as jnp
  from flax import nnx

  import jaxfp4.nnx
  from jaxfp4.models import decoder
  for family in FAMILIES:
    for v in VARIANTS:
      model = decoder.from_pretrained(DATA / family / v, progress=False)
      decoder.save_pretrained(model, out / family / v, max_shard_size="40KB", progress=False)
  model = decoder.from_pretrained(DATA / "llama" / "nf4", dtype=jnp.float32, param_dtype=jnp.float32,
                                  progress=False)
  jaxfp4.nnx.add_lora(model, rank=4, alpha=8.0, rngs=nnx.Rngs(0), target_modules=["q_proj", "v_proj", "down_proj"])
  key = nnx.Rngs(5)
  for _, n in nnx.iter_graph(model):
    if isinstance(n, jaxfp4.nnx.Dense4bit) and n.lora_rank:
      n.lora_b.set_value(0.1 * jax_normal(key, n.lora_b.shape))
  ids = np.load(DATA / "llama" / "logits.npz")["input_ids"]
  jaxfp4.nnx.save_adapters(model, out / "adapter", base_model_name_or_path=str(DATA / "llama" / "nf4"))
  np.savez(out / "ours.npz", lora_f32=np.asarray(model(jnp.asarray(ids))[0]), input_ids=ids)
  print("saved", out)


def jax_normal(rngs, shape):
  import jax
  return jax.random.normal(rngs.params(), shape)


def check(out: Path) -> None:
  import bitsandbytes as bnb
  import torch
  from peft import PeftModel
  from transformers import AutoModelForCausalLM

  def logits(m, ids):
    with torch.no_grad():
      return m(input_ids=ids).logits.float().numpy()

  rows = {}
  for family in FAMILIES:
    ids = torch.from_numpy(np.load(DATA / family / "logits.npz")["input_ids"].astype(np.int64))
    for v in VARIANTS:
      shards = len(list((out / family / v).glob("*.safetensors")))
      ours = logits(AutoModelForCausalLM.from_pretrained(out / family / v, device_map="cpu").eval(), ids)
      theirs = logits(AutoModelForCausalLM.from_pretrained(DATA / family / v, device_map="cpu").eval(), ids)
      rows[f"{family}/{v}"] = {"shards": shards, "max_abs_diff": float(np.abs(ours - theirs).max()),
                               "bit_identical": bool(np.array_equal(ours, theirs))}
      print(family, v, rows[f"{family}/{v}"], flush=True)
  ref = np.load(out / "ours.npz")
  ids = torch.from_numpy(ref["input_ids"].astype(np.int64))
  base = AutoModelForCausalLM.from_pretrained(DATA / "llama" / "nf4", device_map="cpu").eval()
  m32 = AutoModelForCausalLM.from_pretrained(DATA / "llama" / "bf16", dtype=torch.float32).eval()
  qmods = dict(base.named_modules())
  with torch.no_grad():
    for name, mod in m32.named_modules():
      if isinstance(qmods.get(name), bnb.nn.Linear4bit):
        q = qmods[name]
        mod.weight.copy_(bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state).float())
  base_f32 = logits(m32, ids)
  peft32 = logits(PeftModel.from_pretrained(m32, out / "adapter").eval(), ids)
  peft4 = logits(PeftModel.from_pretrained(base, out / "adapter").eval(), ids)
  rows["peft"] = {
      "jaxfp4_vs_peft_f32_max": float(np.abs(ref["lora_f32"] - peft32).max()),
      "jaxfp4_vs_peft_bnb4bit_bf16_max": float(np.abs(ref["lora_f32"] - peft4).max()),
      "top1_agreement_f32": float((ref["lora_f32"].argmax(-1) == peft32.argmax(-1)).mean()),
      "adapter_effect_max": float(np.abs(peft32 - base_f32).max()),
  }
  print(json.dumps(rows["peft"]))
  (out / "report.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
  {"save": save, "check": check}[sys.argv[1]](Path(sys.argv[2]))
