"""LoRA adapters in PEFT's format, against PEFT itself.

tests/data/decoder/peft was written by tools/make_peft_golden.py (peft 0.21.2,
CPU): a rank-4 rsLoRA adapter on q_proj, v_proj and down_proj of the tiny NF4
Llama (tests/data/decoder/llama/nf4) and PEFT's logits with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxfp4.nnx
from jaxfp4.io import SafetensorsFile
from jaxfp4.models import decoder

DATA = Path(__file__).parent / "data" / "decoder"
ADAPTER = DATA / "peft" / "adapter"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
  with np.load(DATA / "peft" / "logits.npz") as f:
    out = {k: f[k] for k in f.files}
  with np.load(DATA / "llama" / "logits.npz") as f:
    out["input_ids"] = f["input_ids"]
  return out


def _base():
  return decoder.from_pretrained(DATA / "llama" / "nf4", dtype=jnp.float32, param_dtype=jnp.float32,
                                 progress=False)


def _logits(model, ids) -> np.ndarray:
  return np.asarray(model(jnp.asarray(ids))[0])


def test_peft_adapter_loads_with_peft_logits(ref, tmp_path):
  model = jaxfp4.nnx.load_adapters(_base(), ADAPTER)
  got = _logits(model, ref["input_ids"])
  # Measured max |diff| 0.0085 (logits up to 2.3), the same as the base alone
  # (test_decoder's nf4 case); the adapter moves the logits by 2.8.
  err = np.abs(got - ref["lora_f32"])
  assert err.max() <= 0.01 and err.mean() <= 0.0025, (err.max(), err.mean())
  np.testing.assert_array_equal(got.argmax(-1), ref["lora_f32"].argmax(-1))
  assert np.abs(ref["lora_f32"] - ref["base_f32"]).max() > 1.0
  q = model.model.layers[0].self_attn.q_proj
  assert q.lora_rank == 4 and q.use_rslora and q.lora_scale == pytest.approx(8 / 2.0)  # alpha / sqrt(r)
  assert model.model.layers[0].self_attn.k_proj.lora_rank == 0

  # Saved again, the directory holds PEFT's tensors bit for bit and its LoRA settings.
  out = jaxfp4.nnx.save_adapters(model, tmp_path / "again", base_model_name_or_path="tests/data/decoder/llama/nf4")
  with SafetensorsFile(ADAPTER / "adapter_model.safetensors") as theirs, \
       SafetensorsFile(out / "adapter_model.safetensors") as ours:
    assert sorted(ours.keys()) == sorted(theirs.keys())
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in ours.keys()
    for k in theirs.keys():
      np.testing.assert_array_equal(ours.get(k), theirs.get(k))
  mine, peft = (json.loads((d / "adapter_config.json").read_text()) for d in (out, ADAPTER))
  for key in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "bias", "use_rslora",
              "base_model_name_or_path"):
    assert mine[key] == peft[key], key
  assert sorted(mine["target_modules"]) == sorted(peft["target_modules"])  # PEFT writes a set
  with pytest.raises(FileExistsError, match="`out_dir`"):
    jaxfp4.nnx.save_adapters(model, out)
  # A checkpoint saved every N steps: overwrite=True replaces the adapter directory whole.
  (out / "stale.txt").write_text("from the last save")
  assert jaxfp4.nnx.save_adapters(model, out, overwrite=True) == out
  assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # nothing left beside it
  with pytest.raises(FileExistsError, match="no adapter_config.json"):
    jaxfp4.nnx.save_adapters(model, tmp_path, overwrite=True)  # not an adapter directory


def test_adapters_made_here_round_trip(tmp_path):
  model = _base()
  jaxfp4.nnx.add_lora(model, rank=2, alpha=4.0, rngs=nnx.Rngs(1), target_modules=r".*layers\.1\.mlp\.(up|gate)_proj")
  adapted = sorted(".".join(map(str, p)) for p, n in nnx.iter_graph(model)
                   if isinstance(n, jaxfp4.nnx.Dense4bit) and n.lora_rank)
  assert adapted == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
  for _, n in nnx.iter_graph(model):
    if isinstance(n, jaxfp4.nnx.Dense4bit) and n.lora_rank:
      n.lora_b.set_value(jnp.full(n.lora_b.shape, 0.05))
  ids = np.arange(3, 15)[None]
  want = _logits(model, ids)
  out = jaxfp4.nnx.save_adapters(model, tmp_path / "a")
  cfg = json.loads((out / "adapter_config.json").read_text())
  assert cfg["target_modules"] == r"^(?:model\.layers\.1\.mlp\.gate_proj|model\.layers\.1\.mlp\.up_proj)$"
  assert cfg["r"] == 2 and cfg["lora_alpha"] == 4.0 and cfg["use_rslora"] is False
  fresh = jaxfp4.nnx.load_adapters(_base(), out)
  np.testing.assert_array_equal(_logits(fresh, ids), want)
  assert np.abs(want - _logits(_base(), ids)).max() > 1e-3


def test_target_modules_follow_peft_rules():
  match = jaxfp4.nnx.target_matcher(["q_proj", "mlp.down_proj"])
  assert match("model.layers.3.self_attn.q_proj") and match("model.layers.0.mlp.down_proj")
  assert not match("model.layers.0.self_attn.qq_proj") and not match("model.layers.0.mlp.up_proj")
  assert jaxfp4.nnx.target_matcher(r"layers\.0\..*")("layers.0.q") is True
  assert jaxfp4.nnx.target_matcher(r"q")("layers.0.q") is False  # fullmatch, as PEFT
  for bad in ([], [3], "(", 7):
    with pytest.raises(ValueError, match="`target_modules`"):
      jaxfp4.nnx.target_matcher(bad)
  model = nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)), nnx.Linear(64, 64, rngs=nnx.Rngs(1)))
  jaxfp4.nnx.quantize_model(model, lora_rank=2, target_modules=["1"], rngs=nnx.Rngs(2))
  assert [l.lora_rank for l in model.layers] == [0, 2]
  with pytest.raises(ValueError, match="`target_modules` picks the layers that get LoRA"):
    jaxfp4.nnx.quantize_model(nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0))), target_modules=["0"])


@pytest.mark.parametrize("change, match", [
    ({"peft_type": "IA3"}, "`peft_type` must be 'LORA'"),
    ({"use_dora": True}, "`use_dora` = True is not supported: DoRA"),
    ({"bias": "all"}, "`bias` = 'all' is not supported"),
    ({"r": 0}, "`r` must be a positive number"),
])
def test_bad_adapter_configs_are_refused(tmp_path, change, match):
  d = tmp_path / "a"
  d.mkdir()
  cfg = json.loads((ADAPTER / "adapter_config.json").read_text())
  (d / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
  (d / "adapter_model.safetensors").write_bytes((ADAPTER / "adapter_model.safetensors").read_bytes())
  model = nnx.eval_shape(lambda: nnx.Sequential(jaxfp4.nnx.Dense4bit(64, 64, rngs=nnx.Rngs(0))))
  with pytest.raises(ValueError, match=match):
    jaxfp4.nnx.load_adapters(model, d)


def test_adapters_for_missing_layers_are_refused():
  model = nnx.Sequential(jaxfp4.nnx.Dense4bit(64, 64, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"adapters for \['model.layers.0.mlp.down_proj'"):
    jaxfp4.nnx.load_adapters(model, ADAPTER)

