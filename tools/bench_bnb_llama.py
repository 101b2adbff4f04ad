"""transformers + bitsandbytes decode tokens/s on the same 1B Llama shapes as tools/bench_llama.py.

Run on a CUDA machine with torch, transformers and bitsandbytes:

  python tools/bench_bnb_llama.py OUT.json

Random bf16 weights, saved once and reloaded as bf16, NF4 and NF4 + double
quantization (``BitsAndBytesConfig``, compute dtype bf16). Each variant greedily
generates 128 tokens after a 128-token prompt with ``model.generate``. Reported:
new tokens / seconds, prefill included, median of 3.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import bitsandbytes as bnb
import torch
import transformers
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM


def main(out: str) -> None:
  torch.manual_seed(0)
  cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                    max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                    tie_word_embeddings=True,
                    rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
  LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained("/tmp/llama1b")
  rows = []
  for variant in ("bf16", "nf4", "nf4_dq"):
    kw = {}
    if variant != "bf16":
      kw["quantization_config"] = BitsAndBytesConfig(
          load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=variant == "nf4_dq",
          bnb_4bit_compute_dtype=torch.bfloat16)
    model = LlamaForCausalLM.from_pretrained("/tmp/llama1b", dtype=torch.bfloat16, device_map="cuda", **kw).eval()
    mem = model.get_memory_footprint()
    for batch in (1, 16):
      ids = torch.randint(0, cfg.vocab_size, (batch, 128), device="cuda")
      with torch.no_grad():
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        times = []
        for _ in range(3):
          torch.cuda.synchronize()
          t0 = time.perf_counter()
          model.generate(ids, max_new_tokens=128, min_new_tokens=128, do_sample=False)
          torch.cuda.synchronize()
          times.append(time.perf_counter() - t0)
      secs = statistics.median(times)
      rows.append(dict(variant=variant, batch=batch, tokens_per_s=batch * 128 / secs, memory_bytes=mem))
      print(f"{variant} batch {batch}: {batch * 128 / secs:.0f} tok/s, footprint {mem / 1e9:.3f} GB")
    del model
    torch.cuda.empty_cache()
  versions = dict(torch=torch.__version__, transformers=transformers.__version__,
                  bitsandbytes=bnb.__version__, device=torch.cuda.get_device_name())
  print(json.dumps(versions))
  with open(out, "w") as f:
    json.dump(dict(versions=versions, rows=rows), f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])
