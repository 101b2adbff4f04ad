"""``jaxfp4.models.llama.from_pretrained`` / ``save_pretrained`` against transformers + bitsandbytes.

tests/data/llama_tiny was written on an H100 by tools/make_llama_golden.py
(transformers 5.17.0, bitsandbytes 0.50.2): a random bf16 Llama with llama3
RoPE scaling, the same model saved by transformers after bitsandbytes NF4 +
double-quant and FP4 quantization, and transformers' logits for each.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxfp4.io
import jaxfp4.nnx
from jaxfp4.models import llama

TINY = Path(__file__).parent / "data" / "llama_tiny"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
  with np.load(TINY / "logits.npz") as f:
    return {k: f[k] for k in f.files}


def _logits(model, ids) -> np.ndarray:
  logits, _ = model(jnp.asarray(ids))
  return np.asarray(logits.astype(jnp.float32))


# Bounds from the measured max |ours - transformers| (logits up to ~4.2 in size):
#   dense, float32: 4.1e-6 (accumulation order only)
#   any, bfloat16: 0.041-0.047, i.e. 1.5 bf16 ulps at 4 (0.03125); the bound is 2 ulps
#   4-bit, float32: 0.019-0.026; transformers rounds the decoded weight to the
#     checkpoint's bfloat16 before the float32 matmul, matmul_4bit rounds it once
#     to float32, so this is the bf16 rounding of the weights.
@pytest.mark.parametrize("name, dtype, key, bound", [
    ("bf16", jnp.float32, "bf16_f32", 2e-5),
    ("bf16", jnp.bfloat16, "bf16_bf16", 0.0625),
    ("nf4_dq", jnp.float32, "nf4_dq_f32", 0.04),
    ("nf4_dq", jnp.bfloat16, "nf4_dq_bf16", 0.0625),
    ("fp4", jnp.float32, "fp4_f32", 0.04),
    ("fp4", jnp.bfloat16, "fp4_bf16", 0.0625),
])
def test_logits_match_transformers(ref, name, dtype, key, bound):
  model = llama.from_pretrained(TINY / name, dtype=dtype, param_dtype=dtype, progress=False)
  got = _logits(model, ref["input_ids"])
  err = np.abs(got - ref[key])
  assert err.max() <= bound, err.max()
  assert err.mean() <= bound / 4, err.mean()
  # A wrong weight (say, an untransposed kernel) is off by O(1).
  assert np.abs(ref[key]).max() > 2.0


def test_4bit_layers_follow_the_checkpoint(ref):
  model = llama.from_pretrained(TINY / "nf4_dq", progress=False)
  attn = model.model.layers[1].self_attn
  assert isinstance(attn.q_proj, jaxfp4.nnx.Dense4bit)
  assert isinstance(model.model.layers[0].mlp.down_proj, jaxfp4.nnx.Dense4bit)
  assert isinstance(model.lm_head, nnx.Linear)  # transformers kept it in bf16
  state = attn.q_proj.quant_state.get_value()
  assert (state.quant_type, state.blocksize, state.nested, state.dtype) == ("nf4", 64, True, jnp.bfloat16)
  # Compute dtype from bnb_4bit_compute_dtype, the rest from the config.
  assert model.dtype == jnp.bfloat16
  assert model.model.embed_tokens.embedding.get_value().dtype == jnp.bfloat16


def test_quantize_on_load_equals_loading_bitsandbytes_bytes(ref):
  a = llama.from_pretrained(TINY / "bf16", quant_type="nf4", blocksize=64, compress_statistics=True,
                            progress=False)
  b = llama.from_pretrained(TINY / "nf4_dq", progress=False)
  np.testing.assert_array_equal(_logits(a, ref["input_ids"]), _logits(b, ref["input_ids"]))


def test_save_pretrained_roundtrip(tmp_path, ref):
  model = llama.from_pretrained(TINY / "nf4_dq", progress=False)
  out = llama.save_pretrained(model, tmp_path / "saved", progress=False)
  with jaxfp4.io.SafetensorsFile(out / "model.safetensors") as a, \
       jaxfp4.io.SafetensorsFile(TINY / "nf4_dq" / "model.safetensors") as b:
    assert sorted(a.keys()) == sorted(b.keys())
    for k in b.keys():
      assert a.get(k).tobytes() == b.get(k).tobytes(), k
  cfg = json.loads((out / "config.json").read_text())
  qc = cfg["quantization_config"]
  assert (qc["bnb_4bit_quant_type"], qc["bnb_4bit_use_double_quant"], qc["llm_int8_skip_modules"]) == (
      "nf4", True, ["lm_head"])
  assert cfg["rope_parameters"]["rope_type"] == "llama3"
  again = llama.from_pretrained(out, progress=False)
  np.testing.assert_array_equal(_logits(again, ref["input_ids"]), _logits(model, ref["input_ids"]))
  with pytest.raises(FileExistsError):
    llama.save_pretrained(model, out, progress=False)
  before = (out / "model.safetensors").read_bytes()
  (out / "model.safetensors").write_bytes(b"stale")
  llama.save_pretrained(model, out, progress=False, overwrite=True)
  assert (out / "model.safetensors").read_bytes() == before
  with pytest.raises(FileExistsError, match="no config.json"):
    llama.save_pretrained(model, tmp_path, progress=False, overwrite=True)


def test_save_pretrained_needs_merged_adapters(tmp_path, ref):
  model = llama.from_pretrained(TINY / "nf4_dq", progress=False)
  jaxfp4.nnx.add_lora(model, rank=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="merge_lora"):
    llama.save_pretrained(model, tmp_path / "x", progress=False)
  jaxfp4.nnx.merge_lora(model)
  llama.save_pretrained(model, tmp_path / "x", progress=False)
  # Zero-initialized B: merging re-quantizes the same weights to the same bytes.
  with jaxfp4.io.SafetensorsFile(tmp_path / "x" / "model.safetensors") as a, \
       jaxfp4.io.SafetensorsFile(TINY / "nf4_dq" / "model.safetensors") as b:
    w = "model.layers.0.mlp.up_proj.weight"
    assert a.get(w).tobytes() == b.get(w).tobytes()


def _copy(tmp_path: Path, name: str, edit=None, config=None) -> Path:
  out = tmp_path / f"edited_{name}"
  out.mkdir()
  cfg = json.loads((TINY / name / "config.json").read_text())
  if config:
    config(cfg)
  (out / "config.json").write_text(json.dumps(cfg))
  with jaxfp4.io.SafetensorsFile(TINY / name / "model.safetensors") as f:
    tensors = {k: f.get(k) for k in f.keys()}
  if edit:
    edit(tensors)
  jaxfp4.io.write_safetensors(out / "model.safetensors", tensors, metadata={"format": "pt"})
  return out


@pytest.mark.parametrize("case, match", [
    ("missing", "missing tensor 'model.layers.1.mlp.up_proj.weight'"),
    ("extra", r"does not have: \['model.layers.0.extra.weight'\]"),
    ("shape", "'model.norm.weight' has shape"),
    ("dense_for_4bit", "'model.layers.0.self_attn.q_proj.weight.absmax'"),
    ("int8", "load_in_8bit"),
    ("gptq", "quant_method 'gptq'"),
    ("arch", "model_type"),
])
def test_bad_checkpoints_name_the_problem(tmp_path, case, match):
  name, edit, config = "nf4_dq", None, None
  if case == "missing":
    edit = lambda t: [t.pop(k) for k in list(t) if k.startswith("model.layers.1.mlp.up_proj.weight")]  # noqa: E731
  elif case == "extra":
    edit = lambda t: t.update({"model.layers.0.extra.weight": np.zeros((2, 2), np.float32)})  # noqa: E731
  elif case == "shape":
    edit = lambda t: t.update({"model.norm.weight": np.zeros((64,), np.float32)})  # noqa: E731
  elif case == "dense_for_4bit":
    # The absmax of a 4-bit group whose blob is gone is left over.
    edit = lambda t: t.pop("model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4")  # noqa: E731
  elif case == "int8":
    config = lambda c: c["quantization_config"].update(load_in_8bit=True, _load_in_8bit=True)  # noqa: E731
  elif case == "gptq":
    config = lambda c: c["quantization_config"].update(quant_method="gptq")  # noqa: E731
  else:
    config = lambda c: c.update(model_type="gpt2")  # noqa: E731
  path = _copy(tmp_path, name, edit, config)
  with pytest.raises(ValueError, match=match):
    llama.from_pretrained(path, progress=False)


def test_truncated_checkpoint(tmp_path):
  out = tmp_path / "t"
  shutil.copytree(TINY / "nf4_dq", out)
  data = (out / "model.safetensors").read_bytes()
  (out / "model.safetensors").write_bytes(data[:-5000])
  with pytest.raises(ValueError, match="truncated: tensor"):
    llama.from_pretrained(out, progress=False)


def test_refuses_to_requantize(tmp_path):
  with pytest.raises(ValueError, match="already 4-bit"):
    llama.from_pretrained(TINY / "nf4_dq", quant_type="nf4", progress=False)


def test_bf16_quant_storage_loads_the_same_model(tmp_path, ref):
  """bnb_4bit_quant_storage="bfloat16" (FSDP-QLoRA) stores the same bytes viewed as bfloat16."""
  import ml_dtypes

  def as_bf16(tensors):
    for k in list(tensors):
      if k + ".quant_map" in tensors:  # a packed 4-bit weight
        tensors[k] = tensors[k].reshape(-1).view(ml_dtypes.bfloat16).reshape(-1, 1)

  path = _copy(tmp_path, "nf4_dq", as_bf16,
               lambda c: c["quantization_config"].update(bnb_4bit_quant_storage="bfloat16"))
  model = llama.from_pretrained(path, progress=False)
  packed = model.model.layers[0].mlp.up_proj.weight.get_value()
  assert packed.dtype == jnp.bfloat16 and packed.shape == (128 * 344 // 4, 1)
  base = llama.from_pretrained(TINY / "nf4_dq", progress=False)
  np.testing.assert_array_equal(_logits(model, ref["input_ids"]), _logits(base, ref["input_ids"]))
