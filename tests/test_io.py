"""jaxfp4.io: the safetensors reader/writer, checkpoint directories, bnb groups, model save/restore."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import jaxfp4
import jaxfp4.io
import jaxfp4.nnx

TINY = Path(__file__).parent / "data" / "llama_tiny"


def _file_bytes(path: Path) -> bytes:
  return path.read_bytes()


def test_roundtrip_every_dtype(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {
      "f32": rng.standard_normal((3, 5)).astype(np.float32),
      "bf16": rng.standard_normal((7,)).astype(ml_dtypes.bfloat16),
      "f16": rng.standard_normal((2, 2, 2)).astype(np.float16),
      "e4m3": rng.standard_normal((16,)).astype(ml_dtypes.float8_e4m3fn),
      "e8m0": np.asarray([0.5, 1, 2, 4], ml_dtypes.float8_e8m0fnu),
      "u8": rng.integers(0, 255, (9, 1), dtype=np.uint8),
      "i64": np.arange(4, dtype=np.int64),
      "empty": np.zeros((0, 3), np.float32),
      "scalar": np.float32(3.5).reshape(()),
  }
  path = jaxfp4.io.write_safetensors(tmp_path / "a.safetensors", ((k, v) for k, v in tensors.items()),
                                     metadata={"format": "pt"})
  with jaxfp4.io.SafetensorsFile(path) as f:
    assert f.metadata == {"format": "pt"}
    assert f.keys() == list(tensors)
    for k, v in tensors.items():
      got = f.get(k)
      assert got.dtype == v.dtype and got.shape == v.shape, k
      assert got.tobytes() == v.tobytes(), k
  # Header: 8-byte length, JSON, padded so the data starts 8-byte aligned.
  raw = path.read_bytes()
  n = int.from_bytes(raw[:8], "little")
  assert n % 8 == 0
  header = json.loads(raw[8:8 + n])
  assert header["bf16"] == {"dtype": "BF16", "shape": [7], "data_offsets": [60, 74]}


def test_reads_a_file_transformers_wrote():
  with jaxfp4.io.SafetensorsFile(TINY / "bf16" / "model.safetensors") as f:
    assert f.metadata == {"format": "pt"}
    info = f.info("model.layers.1.mlp.down_proj.weight")
    assert (info.dtype, info.shape) == (np.dtype(ml_dtypes.bfloat16), (128, 344))
    w = f.get("model.layers.1.mlp.down_proj.weight")
  # make_llama_golden.py draws the 2-D weights from N(0, 0.08).
  assert 0.07 < float(np.std(w.astype(np.float32))) < 0.09


def test_rewriting_a_checkpoint_reproduces_its_bytes(tmp_path):
  src = TINY / "nf4_dq" / "model.safetensors"
  with jaxfp4.io.SafetensorsFile(src) as f:
    out = jaxfp4.io.write_safetensors(tmp_path / "m.safetensors", ((k, f.get(k)) for k in f.keys()),
                                      metadata=f.metadata)
  with jaxfp4.io.SafetensorsFile(src) as a, jaxfp4.io.SafetensorsFile(out) as b:
    assert a.keys() == b.keys()
    assert all(a.get(k).tobytes() == b.get(k).tobytes() for k in a.keys())
  assert out.stat().st_size == src.stat().st_size


@pytest.mark.parametrize("as_mapping", [True, False])
def test_both_write_paths_reproduce_the_file_transformers_wrote(tmp_path, as_mapping):
  # A mapping is written in one pass; a stream goes through a scratch sibling.
  src = TINY / "nf4_dq" / "model.safetensors"
  with jaxfp4.io.SafetensorsFile(src) as f:
    tensors = {k: f.get(k) for k in f.keys()} if as_mapping else ((k, f.get(k)) for k in f.keys())
    out = jaxfp4.io.write_safetensors(tmp_path / "m.safetensors", tensors, metadata=f.metadata)
  assert out.read_bytes() == src.read_bytes()
  assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no scratch file left


@pytest.mark.parametrize("as_mapping", [True, False])
def test_written_file_has_the_umask_mode(tmp_path, as_mapping):
  # Not the 0o600 of the temporary file it was written as.
  import os
  a = np.arange(3, dtype=np.int32)
  out = jaxfp4.io.write_safetensors(tmp_path / "b.safetensors", {"b": a} if as_mapping else iter([("b", a)]))
  assert out.read_bytes()[-12:] == a.astype("<i4").tobytes()
  mask = os.umask(0)
  os.umask(mask)
  assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def test_failed_stream_write_leaves_nothing(tmp_path):
  def tensors():
    yield "a", np.zeros(4, np.float32)
    raise RuntimeError("producer failed")
  with pytest.raises(RuntimeError, match="producer failed"):
    jaxfp4.io.write_safetensors(tmp_path / "x.safetensors", tensors())
  twice = [("a", np.zeros(1)), ("a", np.zeros(1))]
  for tensors in (twice, iter(twice)):  # all at hand, and a stream
    with pytest.raises(ValueError, match="Duplicate tensor name 'a'"):
      jaxfp4.io.write_safetensors(tmp_path / "y.safetensors", tensors)
  assert list(tmp_path.iterdir()) == []


def test_never_overwrites(tmp_path):
  target = tmp_path / "x.safetensors"
  target.write_bytes(b"precious")
  with pytest.raises(FileExistsError, match="never writes over"):
    jaxfp4.io.write_safetensors(target, {"a": np.zeros(3, np.float32)})
  assert target.read_bytes() == b"precious"


@pytest.mark.parametrize("cut", [1, 1000, 200_000])
def test_truncated_file_names_the_tensor(tmp_path, cut):
  src = (TINY / "nf4_dq" / "model.safetensors").read_bytes()
  bad = tmp_path / "t.safetensors"
  bad.write_bytes(src[:-cut])
  with pytest.raises(ValueError, match=r"truncated: tensor '.+' ends at byte"):
    jaxfp4.io.SafetensorsFile(bad)


@pytest.mark.parametrize("header, match", [
    (b"not json", "not valid JSON"),
    (json.dumps({"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}).encode(), "dtype 'Q9'"),
    (json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}).encode(), "needs 8"),
    (json.dumps({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode(), "malformed shape"),
])
def test_malformed_header(tmp_path, header, match):
  bad = tmp_path / "m.safetensors"
  bad.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
  with pytest.raises(ValueError, match=match):
    jaxfp4.io.SafetensorsFile(bad)


def test_unstorable_dtype(tmp_path):
  with pytest.raises(ValueError, match="complex64"):
    jaxfp4.io.write_safetensors(tmp_path / "c.safetensors", {"z": np.zeros(2, np.complex64)})
  assert not (tmp_path / "c.safetensors").exists()


def _shard(tmp_path: Path) -> Path:
  """Splits the tiny nf4 checkpoint into two shards with an index, as transformers does."""
  out = tmp_path / "sharded"
  out.mkdir()
  shutil.copy(TINY / "nf4_dq" / "config.json", out / "config.json")
  with jaxfp4.io.SafetensorsFile(TINY / "nf4_dq" / "model.safetensors") as f:
    keys = f.keys()
    first = [k for k in keys if ".layers.0." in k or "embed" in k]
    second = [k for k in keys if k not in first]
    for name, ks in (("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)):
      jaxfp4.io.write_safetensors(out / name, {k: f.get(k) for k in ks}, metadata={"format": "pt"})
  wmap = {k: "model-00001-of-00002.safetensors" for k in first} | {
      k: "model-00002-of-00002.safetensors" for k in second}
  (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
  return out


def test_sharded_checkpoint(tmp_path):
  d = _shard(tmp_path)
  with jaxfp4.io.Checkpoint(d) as sharded, jaxfp4.io.Checkpoint(TINY / "nf4_dq") as single:
    assert sorted(sharded.keys()) == sorted(single.keys())
    assert sorted(sharded.quantized_weights()) == sorted(single.quantized_weights())
    w = "model.layers.1.self_attn.o_proj.weight"
    p1, s1 = sharded.get_4bit(w)
    p2, s2 = single.get_4bit(w)
    assert p1.tobytes() == p2.tobytes() and s1.shape == s2.shape == (128, 128)
  index = json.loads((d / "model.safetensors.index.json").read_text())
  index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors"
  (d / "model.safetensors.index.json").write_text(json.dumps(index))
  with pytest.raises(ValueError, match="'model.norm.weight'"):
    jaxfp4.io.Checkpoint(d)


def test_bnb_group_matches_our_quantization():
  """The 4-bit groups bitsandbytes wrote decode like ours: same state, same bytes."""
  with jaxfp4.io.Checkpoint(TINY / "nf4_dq") as q, jaxfp4.io.Checkpoint(TINY / "bf16") as dense:
    for w in q.quantized_weights():
      packed, state = q.get_4bit(w)
      assert state.quant_type == "nf4" and state.nested and state.blocksize == 64
      assert state.dtype == jnp.bfloat16
      ours_p, ours_s = jaxfp4.quantize_4bit(jnp.asarray(dense.get(w)), quant_type="nf4",
                                            compress_statistics=True)
      assert np.asarray(ours_p).tobytes() == packed.tobytes(), w
      assert np.asarray(ours_s.absmax).tobytes() == np.asarray(state.absmax).tobytes(), w
      assert np.float32(ours_s.offset) == np.float32(state.offset), w


def test_tensor_group_keys():
  w = jnp.linspace(-1, 1, 64 * 8, dtype=jnp.float32).reshape(8, 64)
  packed, state = jaxfp4.quantize_4bit(w, quant_type="fp4")
  names = [k for k, _ in jaxfp4.io.tensor_group_4bit("m.weight", packed, state)]
  assert names == ["m.weight", "m.weight.absmax", "m.weight.quant_map",
                   "m.weight.quant_state.bitsandbytes__fp4"]


def _break_group(tmp_path: Path, drop: str | None = None, add: dict | None = None,
                 replace: dict | None = None) -> Path:
  out = tmp_path / "broken"
  out.mkdir()
  shutil.copy(TINY / "nf4_dq" / "config.json", out / "config.json")
  with jaxfp4.io.SafetensorsFile(TINY / "nf4_dq" / "model.safetensors") as f:
    tensors = {k: f.get(k) for k in f.keys() if k != drop}
  tensors.update(add or {})
  tensors.update(replace or {})
  jaxfp4.io.write_safetensors(out / "model.safetensors", tensors, metadata={"format": "pt"})
  return out


W = "model.layers.0.mlp.up_proj.weight"


@pytest.mark.parametrize("kind", ["drop_absmax", "bad_json", "bad_shape", "packed_missing"])
def test_malformed_group_names_the_tensor(tmp_path, kind):
  if kind == "drop_absmax":
    d, match = _break_group(tmp_path, drop=W + ".absmax"), "absmax"
  elif kind == "bad_json":
    blob = np.frombuffer(b'{"quant_type": "nf4", "blocksize": 64}', np.uint8)
    d, match = _break_group(tmp_path, replace={W + ".quant_state.bitsandbytes__nf4": blob}), "dtype"
  elif kind == "bad_shape":
    d, match = _break_group(tmp_path, replace={W: np.zeros((7, 1), np.uint8)}), "packed"
  else:
    d, match = _break_group(tmp_path, drop=W), "packed tensor is missing"
  with jaxfp4.io.Checkpoint(d) as ckpt, pytest.raises(ValueError, match=match) as err:
    ckpt.get_4bit(W)
  assert W in str(err.value)


class _Model(nnx.Module):
  def __init__(self, rngs: nnx.Rngs, rank: int = 4):
    self.blocks = nnx.List([jaxfp4.nnx.Dense4bit(64, 64, compress_statistics=True, lora_rank=rank,
                                                 rngs=rngs) for _ in range(2)])
    self.head = nnx.Linear(64, 8, rngs=rngs)

  def __call__(self, x):
    for b in self.blocks:
      x = jax.nn.gelu(b(x))
    return self.head(x)


def test_save_and_restore_a_quantized_model_with_lora(tmp_path):
  model = _Model(nnx.Rngs(0))
  # Non-trivial adapters, as after training.
  lora = nnx.state(model, nnx.LoRAParam)
  nnx.update(model, jax.tree.map(lambda v: v + 0.05, lora))
  path = jaxfp4.io.save_model(tmp_path / "m.safetensors", model, progress=False)
  fresh = nnx.eval_shape(lambda: _Model(nnx.Rngs(1)))
  jaxfp4.io.load_model(path, fresh, progress=False)
  x = jax.random.normal(jax.random.key(0), (3, 64))
  np.testing.assert_array_equal(np.asarray(fresh(x)), np.asarray(model(x)))
  with jaxfp4.io.SafetensorsFile(path) as f:
    assert f.metadata["format"] == "jaxfp4"
    assert "blocks.0.weight.quant_state.bitsandbytes__nf4" in f.keys()
    assert f.get("blocks.1.lora_b").shape == (4, 64)
  with pytest.raises(FileExistsError):
    jaxfp4.io.save_model(path, model, progress=False)


def test_restore_rejects_a_mismatched_model(tmp_path):
  path = jaxfp4.io.save_model(tmp_path / "m.safetensors", _Model(nnx.Rngs(0)), progress=False)
  with pytest.raises(ValueError, match="'blocks.0.lora_a' has shape"):
    jaxfp4.io.load_model(path, _Model(nnx.Rngs(0), rank=2), progress=False)
  no_lora = jaxfp4.io.save_model(tmp_path / "s.safetensors", _Model(nnx.Rngs(0), rank=0), progress=False)
  with pytest.raises(ValueError, match="missing tensor 'blocks.0.lora_a'"):
    jaxfp4.io.load_model(no_lora, _Model(nnx.Rngs(0)), progress=False)


def test_restore_rejects_extra_tensors(tmp_path):
  path = jaxfp4.io.save_model(tmp_path / "m.safetensors", _Model(nnx.Rngs(0)), progress=False)
  with pytest.raises(ValueError, match="not in the model"):
    jaxfp4.io.load_model(path, _Model(nnx.Rngs(0), rank=0), progress=False)


def test_restore_rejects_a_dtype_mismatch(tmp_path):
  path = jaxfp4.io.save_model(tmp_path / "m.safetensors", _Model(nnx.Rngs(0)), progress=False)

  class Bf16Head(_Model):
    def __init__(self, rngs):
      super().__init__(rngs)
      self.head = nnx.Linear(64, 8, param_dtype=jnp.bfloat16, rngs=rngs)

  with pytest.raises(ValueError, match="'head.bias' has dtype float32, the model expects bfloat16"):
    jaxfp4.io.load_model(path, Bf16Head(nnx.Rngs(0)), progress=False)


# --- directory writers: refuse, or replace a checkpoint with overwrite=True ------


def _fill(d: Path, **files: str) -> Path:
  d.mkdir(parents=True, exist_ok=True)
  for name, text in files.items():
    (d / name).write_text(text)
  return d


def test_directory_atomic_overwrite_replaces_a_checkpoint_whole(tmp_path):
  from jaxfp4._src.io.files import directory_atomic, refuse_nonempty_dir
  out = _fill(tmp_path / "ckpt", **{"config.json": "old", "stale": "x"})
  with pytest.raises(FileExistsError, match="overwrite=True"):
    refuse_nonempty_dir(out)
  refuse_nonempty_dir(out, overwrite=True, marker="config.json")
  with directory_atomic(out, overwrite=True) as tmp:
    (tmp / "config.json").write_text("new")
  assert sorted(p.name for p in out.iterdir()) == ["config.json"]
  assert (out / "config.json").read_text() == "new"
  assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no partial or old directory left


def test_directory_atomic_overwrite_failing_keeps_the_old_directory(tmp_path):
  from jaxfp4._src.io.files import directory_atomic
  out = _fill(tmp_path / "ckpt", **{"config.json": "old"})
  with pytest.raises(RuntimeError, match="mid-save"):
    with directory_atomic(out, overwrite=True) as tmp:
      (tmp / "config.json").write_text("new")
      raise RuntimeError("mid-save")
  assert (out / "config.json").read_text() == "old"
  assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


@pytest.mark.parametrize("make", ["no_marker", "file"])
def test_overwrite_refuses_what_the_writer_did_not_make(tmp_path, make):
  from jaxfp4._src.io.files import refuse_nonempty_dir
  if make == "file":
    target = tmp_path / "ckpt"
    target.write_text("a file")
  else:
    target = _fill(tmp_path / "ckpt", **{"notes.txt": "mine"})
  with pytest.raises(FileExistsError, match="no config.json"):
    refuse_nonempty_dir(target, overwrite=True, marker="config.json")
