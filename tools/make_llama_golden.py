"""Writes tiny Llama checkpoints and reference logits with transformers + bitsandbytes.

Run on a CUDA machine with torch, transformers and bitsandbytes:

  python tools/make_llama_golden.py OUT_DIR

OUT_DIR gets ``bf16/`` (a random LlamaForCausalLM saved by ``save_pretrained``),
``nf4_dq/`` and ``fp4/`` (the same model loaded with ``BitsAndBytesConfig`` and
saved again, so the 4-bit tensors are bitsandbytes' own bytes) and
``logits.npz`` (transformers' logits on fixed token ids, plus greedy tokens).
The test suite compares ``jaxfp4.models.llama`` and ``jaxfp4 quantize`` with them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import torch
import transformers
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM


def main(out: Path) -> None:
  out.mkdir(parents=True, exist_ok=True)
  torch.manual_seed(0)
  rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
  cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=344,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
                    rope_theta=50000.0, rope_scaling=rope, bos_token_id=1, eos_token_id=2)
  model = LlamaForCausalLM(cfg).to(torch.bfloat16)
  # Random init gives near-zero weights in some modules; widen them so the
  # logits are not dominated by the norms.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 2:
        p.normal_(0.0, 0.08)
  model.save_pretrained(out / "bf16", safe_serialization=True)

  g = torch.Generator().manual_seed(1)
  ids = torch.randint(3, 512, (2, 24), generator=g)
  res = {"input_ids": ids.numpy().astype(np.int32)}

  def logits(m):
    with torch.no_grad():
      return m(input_ids=ids.cuda()).logits.float().cpu().numpy()

  ref32 = LlamaForCausalLM.from_pretrained(out / "bf16", dtype=torch.float32).cuda().eval()
  res["bf16_f32"] = logits(ref32)
  ref16 = LlamaForCausalLM.from_pretrained(out / "bf16", dtype=torch.bfloat16).cuda().eval()
  res["bf16_bf16"] = logits(ref16)
  prompt = ids[:1, :8].cuda()
  with torch.no_grad():
    gen = ref32.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12)
  res["greedy_f32"] = gen.cpu().numpy().astype(np.int32)

  for name, qt, dq in (("nf4_dq", "nf4", True), ("fp4", "fp4", False)):
    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qt,
                            bnb_4bit_use_double_quant=dq, bnb_4bit_compute_dtype=torch.bfloat16)
    qm = LlamaForCausalLM.from_pretrained(out / "bf16", dtype=torch.bfloat16,
                                          quantization_config=qc, device_map="cuda").eval()
    res[f"{name}_bf16"] = logits(qm)
    qm.save_pretrained(out / name, safe_serialization=True)
    # float32 semantics: dequantize each 4-bit weight with bitsandbytes and run
    # the float32 model on it (what Linear4bit does with a float32 compute dtype).
    m32 = LlamaForCausalLM.from_pretrained(out / "bf16", dtype=torch.float32).cuda().eval()
    qmods = dict(qm.named_modules())
    with torch.no_grad():
      for mname, mod in m32.named_modules():
        q = qmods.get(mname)
        if isinstance(q, bnb.nn.Linear4bit):
          w = bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state)
          mod.weight.copy_(w.float())
    res[f"{name}_f32"] = logits(m32)
    # Reload the saved checkpoint: must be bit-identical to the in-memory one.
    rq = LlamaForCausalLM.from_pretrained(out / name, device_map="cuda").eval()
    np.testing.assert_array_equal(logits(rq), res[f"{name}_bf16"])
  versions = dict(torch=torch.__version__, transformers=transformers.__version__,
                  bitsandbytes=bnb.__version__, device=torch.cuda.get_device_name())
  res["versions"] = np.frombuffer(json.dumps(versions).encode(), np.uint8)
  np.savez_compressed(out / "logits.npz", **res)
  for d in ("bf16", "nf4_dq", "fp4"):
    (out / d / "generation_config.json").unlink(missing_ok=True)
  print(json.dumps(versions))
  for d in ("bf16", "nf4_dq", "fp4"):
    print(d, (out / d / "config.json").read_text())


if __name__ == "__main__":
  main(Path(sys.argv[1]))
