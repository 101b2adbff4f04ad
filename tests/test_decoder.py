"""``jaxfp4.models.decoder`` against transformers + bitsandbytes, one family at a time.

tests/data/decoder/<model_type>/ was written on CPU by tools/make_decoder_golden.py
(torch 2.14.1, transformers 5.25.0, bitsandbytes 0.50.2; see versions.json): a
random bf16 model of each family (hidden 64, 2 layers, vocab 128, window 6 on
20 positions), the same model quantized by bitsandbytes to NF4, NF4 + double
quant and FP4 and saved by transformers, and transformers' logits for each.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxfp4.models import decoder, llama

DATA = Path(__file__).parent / "data" / "decoder"
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")

# Bounds just above the largest max |ours - transformers| measured over the
# eight families (logits up to ~5 in size; see docs/benchmarks.md):
#   dense, float32: 1.4e-6 (accumulation order only)
#   dense, bfloat16: 0.0234 (under one bf16 ulp at 4, 0.03125)
#   4-bit, float32: 0.0185; transformers rounds the dequantized weight to the
#     checkpoint's bfloat16 before its float32 matmul, jaxfp4 does not.
CASES = (("bf16", "bf16_f32", jnp.float32, 2e-6), ("bf16", "bf16_bf16", jnp.bfloat16, 0.03125),
         ("nf4", "nf4_f32", jnp.float32, 0.02), ("nf4_dq", "nf4_dq_f32", jnp.float32, 0.02),
         ("fp4", "fp4_f32", jnp.float32, 0.02))


def _ref(family: str) -> dict[str, np.ndarray]:
  with np.load(DATA / family / "logits.npz") as f:
    return {k: f[k] for k in f.files}


def _logits(model, ids) -> np.ndarray:
  return np.asarray(model(jnp.asarray(ids))[0].astype(jnp.float32))


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family):
  ref = _ref(family)
  for name, key, dtype, bound in CASES:
    model = decoder.from_pretrained(DATA / family / name, dtype=dtype, param_dtype=dtype, progress=False)
    assert model.config.model_type == family
    got = _logits(model, ref["input_ids"])
    err = np.abs(got - ref[key])
    assert err.max() <= bound, (key, err.max())
    assert err.mean() <= bound / 4, (key, err.mean())
    if dtype == jnp.float32 and name == "bf16":
      np.testing.assert_array_equal(got.argmax(-1), ref[key].argmax(-1))
  # A wrong weight or a missing feature moves the logits by O(0.1-1).
  assert np.abs(ref["bf16_f32"]).max() > 1.5


def test_llama_module_loads_llama_only():
  model = llama.from_pretrained(DATA / "llama" / "bf16", progress=False)
  assert isinstance(model, llama.LlamaForCausalLM) and isinstance(model.config, llama.LlamaConfig)
  with pytest.raises(ValueError, match="`model_type` must be 'llama', got 'mistral'"):
    llama.from_pretrained(DATA / "mistral" / "bf16", progress=False)


def test_cached_decoding_matches_full_forward():
  """Windows, local/global layers and two RoPE bases hold token by token through the cache."""
  ref = _ref("gemma3_text")
  model = decoder.from_pretrained(DATA / "gemma3_text" / "bf16", dtype=jnp.float32, param_dtype=jnp.float32,
                                  progress=False)
  ids = jnp.asarray(ref["input_ids"])
  step = nnx.jit(lambda m, ids, cache: m(ids, cache=cache))  # two compilations, not one per op shape
  cache = decoder.init_cache(model.config, 1, ids.shape[1])
  first, cache = step(model, ids[:, :12], cache)
  steps = [first]
  for t in range(12, ids.shape[1]):
    out, cache = step(model, ids[:, t:t + 1], cache)
    steps.append(out)
  got = np.asarray(jnp.concatenate(steps, axis=1))
  np.testing.assert_allclose(got, ref["bf16_f32"], atol=2e-6, rtol=0)


def _hf(family: str) -> dict:
  return json.loads((DATA / family / "bf16" / "config.json").read_text())


@pytest.mark.parametrize("change, match", [
    ({"model_type": "mixtral"}, "'mixtral' is not supported: mixture-of-experts"),
    ({"model_type": "gemma3"}, "'gemma3' is not supported: it is the multimodal"),
    ({"model_type": "gpt2"}, "`model_type` must be one of gemma, gemma2"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "'yarn' is not supported"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "'longrope' is not supported"),
    ({"partial_rotary_factor": 0.5}, "`partial_rotary_factor` must be 1.0"),
    ({"hidden_act": "relu"}, "`hidden_act` must be one of"),
    ({"layer_types": ["full_attention"]}, "`layer_types` must list one of"),
])
def test_refused_configs_name_the_feature(change, match):
  with pytest.raises(ValueError, match=match):
    decoder.DecoderConfig.from_hf({**_hf("phi3"), **change})


def test_config_round_trips_and_gemma_rules():
  for family in FAMILIES:
    cfg = decoder.DecoderConfig.from_hf(_hf(family))
    assert decoder.DecoderConfig.from_hf(json.loads(json.dumps(cfg.to_hf()))) == cfg, family
  # transformers 5's Gemma configs type it int (strict dataclass validation).
  assert decoder.DecoderConfig.from_hf(_hf("gemma2")).to_hf()["query_pre_attn_scalar"] == 24
  assert isinstance(decoder.DecoderConfig.from_hf(_hf("gemma2")).to_hf()["query_pre_attn_scalar"], int)
  g3 = decoder.DecoderConfig.from_hf(_hf("gemma3_text"))
  assert g3.rope_local_theta == 1e4 and g3.rope_scaling["factor"] == 2.0
  assert [g3.layer_type(i) for i in range(2)] == ["sliding_attention", "full_attention"]
  with pytest.raises(ValueError, match="`use_bidirectional_attention` must be false"):
    decoder.DecoderConfig.from_hf({**_hf("gemma3_text"), "use_bidirectional_attention": True})
  # transformers 4 layout: Gemma 2's alternation and Gemma 3's pattern are derived.
  old = {k: v for k, v in _hf("gemma2").items() if k != "layer_types"}
  assert decoder.DecoderConfig.from_hf({**old, "num_hidden_layers": 4}).layer_types == (
      "sliding_attention", "full_attention") * 2
  old = {k: v for k, v in _hf("gemma3_text").items() if k not in ("layer_types", "rope_parameters")}
  cfg = decoder.DecoderConfig.from_hf({**old, "num_hidden_layers": 6, "rope_theta": 1e6,
                                       "rope_local_base_freq": 5e3, "sliding_window_pattern": 3})
  assert cfg.layer_types == ("sliding_attention", "sliding_attention", "full_attention") * 2
  assert cfg.rope_local_theta == 5e3
  qwen = decoder.DecoderConfig.from_hf({**_hf("qwen2"), "use_sliding_window": True, "sliding_window": 4,
                                        "max_window_layers": 1, "layer_types": None})
  assert qwen.layer_types == ("full_attention", "sliding_attention")


def test_save_pretrained_shards_index_and_card(tmp_path):
  src = DATA / "qwen2" / "nf4_dq"
  model = decoder.from_pretrained(src, dtype=jnp.float32, progress=False)
  ids = _ref("qwen2")["input_ids"]
  want = _logits(model, ids)
  out = decoder.save_pretrained(model, tmp_path / "out", max_shard_size="20KB", base_model="org/tiny",
                                progress=False)
  index = json.loads((out / "model.safetensors.index.json").read_text())
  files = sorted(set(index["weight_map"].values()))
  assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
  assert sorted(p.name for p in out.glob("*.safetensors")) == files
  assert index["metadata"]["total_size"] > 0
  card = (out / "README.md").read_text()
  assert "nf4" in card and "double quantization" in card and "base_model: org/tiny" in card
  again = decoder.from_pretrained(out, dtype=jnp.float32, progress=False)
  np.testing.assert_array_equal(_logits(again, ids), want)
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["quantization_config"]["bnb_4bit_use_double_quant"] is True
  assert cfg["tie_word_embeddings"] is True and cfg["model_type"] == "qwen2"
  # Nothing is written over, and a failed save leaves nothing behind.
  with pytest.raises(FileExistsError, match="`out_dir`"):
    decoder.save_pretrained(model, out, progress=False)
  with pytest.raises(ValueError, match="`max_shard_size` must be a positive int"):
    decoder.save_pretrained(model, tmp_path / "bad", max_shard_size="lots", progress=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _hub_cache(root: Path, repo: str, src: Path, commit: str = "0" * 40) -> Path:
  """A hub cache as huggingface_hub lays it: models--org--name/{refs/main, snapshots/<commit>/}."""
  entry = root / ("models--" + repo.replace("/", "--"))
  snap = entry / "snapshots" / commit
  shutil.copytree(src, snap)
  (entry / "refs").mkdir()
  (entry / "refs" / "main").write_text(commit)
  return snap


def test_from_pretrained_resolves_repo_ids_in_the_hub_cache(tmp_path, monkeypatch):
  pytest.importorskip("huggingface_hub")
  cache = tmp_path / "hub"
  _hub_cache(cache, "org/tiny-mistral", DATA / "mistral" / "nf4")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  model = decoder.from_pretrained("org/tiny-mistral", cache_dir=cache, dtype=jnp.float32, progress=False)
  ref = _ref("mistral")
  assert np.abs(_logits(model, ref["input_ids"]) - ref["nf4_f32"]).max() <= 0.02
  with pytest.raises(FileNotFoundError, match=r"'org/absent'.*local Hub cache \(offline\)"):
    decoder.from_pretrained("org/absent", cache_dir=cache, progress=False)
  with pytest.raises(FileNotFoundError, match="neither an existing directory nor a Hub repo id"):
    decoder.from_pretrained("no/such/dir", progress=False)
