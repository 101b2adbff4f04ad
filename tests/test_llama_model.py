"""The NNX Llama: config parsing, transformers parity, KV cache and generation."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxfp4._src.io.safetensors import SafetensorsFile
from jaxfp4._src.models.llama import generate as generate_lib
from jaxfp4._src.models.llama.config import LlamaConfig
from jaxfp4._src.models.llama.generate import generate, make_generate_fns, sample_logits
from jaxfp4._src.models.llama.model import LlamaForCausalLM, init_cache

DATA = os.path.join(os.path.dirname(__file__), "data", "llama_tiny")
PROMPT = np.array([[3, 14, 15, 92, 65], [35, 89, 79, 32, 38]], np.int32)
# Eager forwards share one shape, so their per-op compilations are reused.
IDS = np.concatenate([PROMPT, PROMPT[::-1]], axis=1)


@pytest.fixture(scope="module")
def gold() -> dict[str, np.ndarray]:
  """transformers 5.17 outputs on an H100 (tools/make_llama_golden.py)."""
  with np.load(os.path.join(DATA, "logits.npz")) as f:
    return {k: f[k] for k in f.files}


def _hf_config() -> dict:
  with open(os.path.join(DATA, "bf16", "config.json")) as f:
    return json.load(f)


def _load_golden(dtype) -> LlamaForCausalLM:
  """Copies the golden checkpoint's tensors into a model, by HF name."""
  cfg = LlamaConfig.from_hf(_hf_config())
  model = nnx.eval_shape(lambda: LlamaForCausalLM(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
  with SafetensorsFile(os.path.join(DATA, "bf16", "model.safetensors")) as f:
    for name in f.keys():
      *path, leaf = name.split(".")
      obj = model
      for p in path:
        obj = obj[int(p)] if p.isdigit() else getattr(obj, p)
      w = np.asarray(f.get(name))
      if isinstance(obj, nnx.Embed):
        var = obj.embedding
      elif isinstance(obj, nnx.Linear):
        # HF stores W[out, in]; nnx.Linear's kernel is [in, out].
        var, w = (obj.kernel, w.T) if leaf == "weight" else (obj.bias, w)
      else:
        var = obj.weight
      assert var.shape == w.shape, name
      var.set_value(jnp.asarray(w).astype(dtype))
  return model


@pytest.fixture(scope="module")
def golden_f32() -> LlamaForCausalLM:
  return _load_golden(jnp.float32)


def _random_model(seed=0, **overrides) -> LlamaForCausalLM:
  return LlamaForCausalLM(LlamaConfig.tiny(**overrides), rngs=nnx.Rngs(seed))


# --- config -------------------------------------------------------------------


def test_config_from_hf_transformers5_matches_tiny():
  cfg = LlamaConfig.from_hf(_hf_config())
  assert cfg == LlamaConfig.tiny()
  assert cfg.rope_type == "llama3" and cfg.rope_theta == 50000.0
  assert cfg.rope_scaling["original_max_position_embeddings"] == 32
  assert hash(cfg) == hash(LlamaConfig.tiny())  # static under jit


def test_config_from_hf_transformers4_style():
  d = _hf_config()
  rope = dict(d.pop("rope_parameters"))
  d["rope_theta"] = rope.pop("rope_theta")
  rope["type"] = rope.pop("rope_type")  # the oldest spelling
  d["rope_scaling"] = rope
  assert LlamaConfig.from_hf(d) == LlamaConfig.tiny()
  d["rope_scaling"] = None
  cfg = LlamaConfig.from_hf(d)
  assert cfg.rope_scaling is None and cfg.rope_type == "default" and cfg.rope_theta == 50000.0
  d["rope_scaling"] = {"rope_type": "default"}
  assert LlamaConfig.from_hf(d).rope_scaling is None


def test_config_defaults_and_roundtrip():
  cfg = LlamaConfig(vocab_size=10, hidden_size=64, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=4, eos_token_id=[2, 3])
  assert cfg.num_key_value_heads == 4 and cfg.head_dim == 16 and cfg.eos_token_ids == (2, 3)
  for c in (cfg, LlamaConfig.tiny(), LlamaConfig.llama_1b(), LlamaConfig.llama_8b()):
    d = c.to_hf()
    assert d["model_type"] == "llama" and d["architectures"] == ["LlamaForCausalLM"]
    assert LlamaConfig.from_hf(json.loads(json.dumps(d))) == c
  d = LlamaConfig.llama_1b().to_hf()
  assert d["rope_parameters"] == {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192}
  one_b = LlamaConfig.llama_1b()
  assert (one_b.hidden_size, one_b.num_hidden_layers, one_b.head_dim, one_b.tie_word_embeddings) == (2048, 16, 64, True)


@pytest.mark.parametrize("change, match", [
    ({"model_type": "mistral"}, "`model_type`"),
    ({"hidden_act": "gelu"}, "`hidden_act`"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "`rope_scaling`"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}}, "`rope_scaling`"),
    ({"num_key_value_heads": 3}, "`num_attention_heads`"),
    ({"vocab_size": 0}, "`vocab_size`"),
    ({"hidden_size": 12.5}, "`hidden_size`"),
    ({"rms_norm_eps": -1.0}, "`rms_norm_eps`"),
    ({"head_dim": 31}, "`head_dim`"),
    ({"eos_token_id": "2"}, "`eos_token_id`"),
])
def test_config_bad_values(change, match):
  with pytest.raises(ValueError, match=match):
    LlamaConfig.from_hf({**_hf_config(), **change})


def test_config_preset_unknown_field():
  with pytest.raises(ValueError, match="hidden"):
    LlamaConfig.tiny(hidden=3)


# --- transformers parity ------------------------------------------------------


def test_module_paths_match_hf_keys():
  seen = {}

  def linear(path, in_features, out_features, use_bias):
    seen[path] = (in_features, out_features, use_bias)
    return nnx.Linear(in_features, out_features, use_bias=use_bias, rngs=nnx.Rngs(0))

  model = LlamaForCausalLM(LlamaConfig.tiny(), linear=linear, rngs=nnx.Rngs(0))
  with SafetensorsFile(os.path.join(DATA, "bf16", "model.safetensors")) as f:
    hf = {k: f.info(k).shape for k in f.keys()}
  linears = {k[:-len(".weight")]: s for k, s in hf.items() if len(s) == 2 and "embed_tokens" not in k}
  assert set(seen) == set(linears)
  for path, (out_features, in_features) in linears.items():
    assert seen[path] == (in_features, out_features, False)
  flat = {".".join(str(p) for p in path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  norms = {k for k, s in hf.items() if len(s) == 1}
  assert {k for k in flat if k.endswith(".weight")} == norms
  assert "model.embed_tokens.embedding" in flat


def test_logits_match_transformers_f32(gold, golden_f32):
  logits, cache = golden_f32(jnp.asarray(gold["input_ids"]))
  assert cache is None and logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits), gold["bf16_f32"], rtol=0, atol=5e-5)


def test_logits_match_transformers_bf16(gold):
  model = _load_golden(jnp.bfloat16)
  logits, _ = model(jnp.asarray(gold["input_ids"]))
  assert logits.dtype == jnp.bfloat16
  err = np.abs(np.asarray(logits.astype(jnp.float32)) - gold["bf16_bf16"])
  # |logits| < 8: one bfloat16 ulp is at most 2**-5; transformers' own float32
  # and bfloat16 logits differ by 0.042 here, ours from its bfloat16 by 0.023.
  assert err.max() <= 0.04 and err.mean() <= 0.004
  assert (np.asarray(logits.astype(jnp.float32)).argmax(-1) == gold["bf16_bf16"].argmax(-1)).all()


def test_greedy_matches_transformers(gold, golden_f32):
  prompt = gold["input_ids"][:1, :8]
  out = generate(golden_f32, prompt, max_new_tokens=12)
  np.testing.assert_array_equal(np.asarray(out), gold["greedy_f32"])


# --- KV cache -------------------------------------------------------------------


def test_cached_decoding_equals_full_forward():
  model = _random_model()
  ids = jax.random.randint(jax.random.key(1), (2, 11), 0, 512, jnp.int32)
  full, _ = model(ids)
  step = nnx.jit(lambda m, x, c: m(x, cache=c))
  cache = init_cache(model.config, 2, 16, jnp.float32)
  chunks = []
  # A 3-token prefill, single tokens and a 3-token chunk in the middle.
  for lo, hi in ((0, 3), (3, 4), (4, 5), (5, 8), (8, 9), (9, 10), (10, 11)):
    logits, cache = step(model, ids[:, lo:hi], cache)
    chunks.append(logits)
  assert int(cache.length) == 11 and cache.k.shape == (2, 2, 16, 2, 32)
  np.testing.assert_allclose(np.asarray(jnp.concatenate(chunks, 1)), np.asarray(full), rtol=0, atol=2e-5)


def test_explicit_positions_and_bad_input():
  model = _random_model()
  ids = jnp.asarray(IDS)
  a, _ = model(ids)
  b, _ = model(ids, positions=jnp.arange(10, dtype=jnp.int32))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c, _ = model(ids, positions=jnp.arange(10, dtype=jnp.int32)[None].repeat(2, 0) + 5)
  assert not np.allclose(np.asarray(a), np.asarray(c))
  with pytest.raises(ValueError, match="`input_ids`"):
    model(ids.astype(jnp.float32))
  with pytest.raises(ValueError, match="`max_len`"):
    init_cache(model.config, 1, 0)


def test_tied_embeddings():
  model = _random_model(tie_word_embeddings=True)
  assert model.lm_head is None
  assert not any("lm_head" in str(p) for p, _ in nnx.to_flat_state(nnx.state(model)))
  ids = jnp.asarray(IDS)
  logits, _ = model(ids)
  hidden, _ = model.model(ids)
  emb = model.model.embed_tokens.embedding.get_value()
  np.testing.assert_allclose(np.asarray(logits), np.asarray(hidden @ emb.T), rtol=1e-5, atol=1e-5)


# --- generation -----------------------------------------------------------------


def test_greedy_generate_matches_uncached_argmax_and_compiles_once():
  model = _random_model(seed=2)
  out = generate(model, PROMPT, max_new_tokens=6)
  assert out.shape == (2, 11) and out.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(out[:, :5]), PROMPT)
  # Greedy: each new token is the argmax of the uncached forward on its prefix.
  logits, _ = model(out[:, :-1])
  np.testing.assert_array_equal(np.asarray(jnp.argmax(logits[:, 4:], -1)), np.asarray(out[:, 5:]))
  sizes = generate_lib._prefill._cache_size(), generate_lib._decode._cache_size()
  again = generate(_random_model(seed=3), PROMPT, max_new_tokens=6)  # same structure, new weights
  assert (generate_lib._prefill._cache_size(), generate_lib._decode._cache_size()) == sizes
  assert not np.array_equal(np.asarray(again), np.asarray(out))
  np.testing.assert_array_equal(np.asarray(generate(model, PROMPT, max_new_tokens=6)), np.asarray(out))


def test_generate_pieces_and_eos():
  model = _random_model(seed=2)
  ref = np.asarray(generate(model, PROMPT, max_new_tokens=6))
  fns = make_generate_fns(model, max_new_tokens=6)
  token, cache, done, key = fns.prefill(PROMPT)
  assert int(cache.length) == 5 and cache.max_len == 11 and not bool(done.any())
  np.testing.assert_array_equal(np.asarray(fns.decode(token, cache, done, key)), ref[:, 5:])
  logits, cache2 = fns.step(token, cache)
  assert logits.shape == (2, 512) and int(cache2.length) == 6
  np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, -1)), ref[:, 6])
  # A row that emits EOS pads with it (or pad_token_id) afterwards; the other
  # row runs on.
  j = next(j for j in range(6, 10) if ref[0, j] not in ref[0, 5:j] and ref[0, j] not in ref[1, 5:])
  eos = int(ref[0, j])
  out = np.asarray(generate(model, PROMPT, max_new_tokens=6, eos_token_id=eos))
  np.testing.assert_array_equal(out[0, :j + 1], ref[0, :j + 1])
  assert (out[0, j + 1:] == eos).all()
  np.testing.assert_array_equal(out[1], ref[1])
  out = np.asarray(generate(model, PROMPT, max_new_tokens=6, eos_token_id=eos, pad_token_id=0))
  np.testing.assert_array_equal(out[0, :j + 1], ref[0, :j + 1])
  assert (out[0, j + 1:] == 0).all()
  np.testing.assert_array_equal(np.asarray(generate(model, PROMPT, max_new_tokens=1)), ref[:, :6])


def test_sampling_reproducible_and_needs_key():
  model = _random_model(seed=4)
  kw = dict(max_new_tokens=6, temperature=1.5, top_k=100, top_p=0.95)
  a = generate(model, PROMPT, key=jax.random.key(0), **kw)
  b = generate(model, PROMPT, key=jax.random.key(0), **kw)
  c = generate(model, PROMPT, key=jax.random.key(1), **kw)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))
  # top_k and top_p are traced into the decode loop: the sampled tokens are
  # always among the top_k of the uncached forward's logits.
  logits, _ = model(a[:, :-1])
  top = np.asarray(jax.lax.top_k(logits[:, 4:], 100)[1])
  assert (top == np.asarray(a[:, 5:])[..., None]).any(-1).all()
  with pytest.raises(ValueError, match="`key`"):
    generate(model, PROMPT, max_new_tokens=4, temperature=0.7)


@pytest.mark.parametrize("bad, match", [
    ({"temperature": -1.0}, "`temperature`"), ({"top_k": 0}, "`top_k`"), ({"top_p": 1.5}, "`top_p`"),
    ({"max_new_tokens": 0}, "`max_new_tokens`"), ({"eos_token_id": -1}, "`eos_token_id`"),
])
def test_generate_bad_options(bad, match):
  model = _random_model()
  kw = {"max_new_tokens": 2, **bad}
  with pytest.raises(ValueError, match=match):
    generate(model, jnp.ones((1, 2), jnp.int32), key=jax.random.key(0), **kw)
  with pytest.raises(ValueError, match="`prompt_ids`"):
    generate(model, jnp.ones((2,), jnp.int32), max_new_tokens=2)


def test_top_k_top_p_filtering():
  probs = np.array([0.05, 0.45, 0.2, 0.3], np.float32)
  logits = jnp.asarray(np.log(probs))[None].repeat(4000, 0)
  draw = lambda **kw: np.asarray(sample_logits(logits, jax.random.key(0), temperature=1.0, **kw))
  counts = np.bincount(draw(), minlength=4) / 4000
  np.testing.assert_allclose(counts, probs, atol=0.03)
  assert set(draw(top_k=2).tolist()) == {1, 3}
  # Nucleus 0.7: 0.45 + 0.3 reaches it, so {1, 3} survive, renormalized 0.6/0.4.
  counts = np.bincount(draw(top_p=0.7), minlength=4) / 4000
  np.testing.assert_allclose(counts, [0, 0.6, 0, 0.4], atol=0.03)
  # top_p after top_k on the tempered logits, as transformers orders them.
  assert set(draw(top_k=3, top_p=0.5).tolist()) == {1, 3}
  assert set(draw(top_p=0.4).tolist()) == {1}
  np.testing.assert_array_equal(np.asarray(sample_logits(logits[:2])), [1, 1])
  # top_k=1 and a tiny top_p leave only the argmax.
  assert set(draw(top_k=1).tolist()) == {1} and set(draw(top_p=1e-6).tolist()) == {1}
  with pytest.raises(ValueError, match="`key`"):
    sample_logits(logits, temperature=1.0)
