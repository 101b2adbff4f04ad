"""Loading a Hugging Face ``BertModel`` / sentence-transformers directory.

A sentence-transformers model directory (all-MiniLM-L6-v2's layout) holds
``config.json``, ``model.safetensors`` and ``vocab.txt`` (the Transformer
module), and optionally ``modules.json``, ``sentence_bert_config.json``
(``max_seq_length``) and the pooling config (``1_Pooling/config.json``). Only
mean pooling, optionally followed by ``Normalize``, is supported.

Tensor names are transformers' ``BertModel`` names, optionally under ``bert.``
(as ``BertForMaskedLM`` saves them). Linear weights are ``[out, in]`` and are
transposed into Flax's ``[in, out]`` kernels. ``embeddings.position_ids`` (a
buffer older transformers saved) and ``pooler.*`` (the model builds no pooler)
are ignored; any other tensor the model lacks is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxfp4._src.io import checkpoint
from jaxfp4._src.models.bert.config import BertConfig
from jaxfp4._src.models.bert.encode import SentenceEncoder
from jaxfp4._src.models.bert.model import BertModel
from jaxfp4._src.models.bert.tokenizer import WordPieceTokenizer
from jaxfp4._src.progress import bar as progress_bar

_PREFIX = "bert."
_IGNORED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
_ST_MODULES = {"sentence_transformers.models.Transformer": "transformer",
               "sentence_transformers.models.Pooling": "pooling",
               "sentence_transformers.models.Normalize": "normalize"}


def load_model(
    path: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    progress: bool = False,
) -> BertModel:
  """Loads the ``BertModel`` of a Hugging Face directory (``config.json`` + safetensors).

  Args:
    path: the directory.
    dtype: compute dtype.
    param_dtype: dtype the parameters are cast to.
    progress: show a progress bar.

  Returns:
    A :class:`BertModel` with the checkpoint's weights. Raises ValueError naming
    the tensor when one is missing, mis-shaped, not floating point, or not part
    of the model.

  Example:
    >>> import json, pathlib, tempfile
    >>> from flax import nnx
    >>> import jaxfp4.io
    >>> from jaxfp4.models import bert
    >>> tmp = tempfile.TemporaryDirectory()   # a tiny random BERT directory, as transformers saves one
    >>> d = pathlib.Path(tmp.name)
    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "."]
    >>> _ = (d / "vocab.txt").write_text("\\n".join(words))
    >>> _ = (d / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": len(words),
    ...     "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}))
    >>> tiny = bert.BertModel(bert.BertConfig.from_file(d), rngs=nnx.Rngs(0))
    >>> hf_name = lambda p: ".".join(map(str, p[:-1] + (("weight",) if p[-1] in ("kernel", "embedding") else p[-1:])))
    >>> _ = jaxfp4.io.write_safetensors(d / "model.safetensors", {hf_name(p): v.get_value().T if p[-1] == "kernel"
    ...     else v.get_value() for p, v in nnx.iter_graph(tiny) if isinstance(v, nnx.Param)})
    >>> model = bert.load_model(d)                 # e.g. an all-MiniLM-L6-v2/ directory
    >>> model.config.hidden_size
    32
    >>> tmp.cleanup()
  """
  path = Path(path)
  dtype = checkpoint.model_dtype("dtype", dtype)
  param_dtype = checkpoint.model_dtype("param_dtype", param_dtype)
  config = BertConfig.from_file(path)
  # Build without allocating (every array is replaced by the checkpoint's).
  model = nnx.eval_shape(lambda: BertModel(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
  with checkpoint.Checkpoint(path) as ckpt:
    _fill(model, ckpt, progress=progress)
  return model


def _fill(model: BertModel, ckpt: checkpoint.Checkpoint, *, progress: bool) -> None:
  keys = set(ckpt.keys())
  prefix = _PREFIX if any(k.startswith(_PREFIX) for k in keys) else ""
  entries = [(p, v) for p, v in nnx.iter_graph(model)
             if isinstance(v, nnx.Variable) and not isinstance(v, nnx.RngState)]
  used = set()
  for p, var in progress_bar(entries, enabled=progress, desc="load", unit="tensor"):
    module, leaf = ".".join(str(k) for k in p[:-1]), str(p[-1])
    # nnx.Linear's kernel and nnx.Embed's embedding are HF's "weight".
    key = f"{prefix}{module}.{'weight' if leaf in ('kernel', 'embedding') else leaf}"
    if key not in keys:
      raise ValueError(f"{ckpt.path}: missing tensor {key!r} (the model's `{module}.{leaf}`).")
    like = var.get_value()
    want = tuple(like.shape)[::-1] if leaf == "kernel" else tuple(like.shape)
    info = ckpt.info(key)
    if tuple(info.shape) != want:
      raise ValueError(f"{ckpt.path}: tensor {key!r} has shape {tuple(info.shape)}, the model expects {want}"
                       f"{' ([out, in])' if leaf == 'kernel' else ''}.")
    array = ckpt.get(key)
    if not np.issubdtype(array.dtype, np.floating) and array.dtype != jnp.bfloat16:
      raise ValueError(f"{ckpt.path}: tensor {key!r} has dtype {array.dtype}; a float tensor is expected.")
    if leaf == "kernel":
      array = array.T
    var.set_value(jnp.asarray(array.astype(like.dtype)))
    used.add(key)
  extra = sorted(k for k in keys - used if k.removeprefix(prefix) not in _IGNORED)
  if extra:
    raise ValueError(f"{ckpt.path}: tensors the model does not have: {extra[:8]}"
                     f"{' ...' if len(extra) > 8 else ''}.")


def _read_json(path: Path) -> Any:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e}).") from None


def read_pipeline(path: str | os.PathLike) -> tuple[Path, Path | None, bool]:
  """Reads a sentence-transformers directory's modules.

  Accepts Transformer -> Pooling [-> Normalize] (``modules.json``). A directory
  without ``modules.json`` is a plain Hugging Face model: mean pooling and
  normalization are assumed (all-MiniLM-L6-v2's pipeline).

  Returns:
    ``(transformer_dir, pooling_config or None, normalize)``.
  """
  path = Path(path)
  modules_file = path / "modules.json"
  if not modules_file.is_file():
    pooling = path / "1_Pooling" / "config.json"
    return path, pooling if pooling.is_file() else None, True
  modules = _read_json(modules_file)
  if not isinstance(modules, list):
    raise ValueError(f"{modules_file}: must hold a JSON list of modules.")
  kinds = [_ST_MODULES.get(str(m.get("type"))) if isinstance(m, dict) else None for m in modules]
  if None in kinds or kinds[:2] != ["transformer", "pooling"] or kinds[2:] not in ([], ["normalize"]):
    types = [m.get("type") if isinstance(m, dict) else m for m in modules]
    raise ValueError(f"{modules_file}: the modules must be Transformer, Pooling and optionally Normalize "
                     f"(sentence_transformers.models.*), got {types}.")
  pooling = path / modules[1].get("path", "1_Pooling") / "config.json"
  return (path / modules[0].get("path", ""), pooling if pooling.is_file() else None,
          kinds[2:] == ["normalize"])


def check_pooling(pooling_file: Path, hidden_size: int) -> None:
  """Raises ValueError unless ``1_Pooling/config.json`` asks for mean pooling of ``hidden_size`` states."""
  pooling = _read_json(pooling_file)
  modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
  if modes != ["pooling_mode_mean_tokens"]:
    raise ValueError(f"{pooling_file}: the pooling mode must be mean pooling only "
                     f"('pooling_mode_mean_tokens': true, every other pooling_mode_* false); got {modes}.")
  dim = pooling.get("word_embedding_dimension", hidden_size)
  if dim != hidden_size:
    raise ValueError(f"{pooling_file}: `word_embedding_dimension` is {dim}, but the model's hidden_size "
                     f"is {hidden_size}.")


def from_pretrained(
    path: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    max_length: int | None = None,
    progress: bool = False,
) -> SentenceEncoder:
  """Loads a sentence-transformers BERT model (e.g. all-MiniLM-L6-v2) for embedding sentences.

  Args:
    path: the model directory (``config.json``, ``model.safetensors``,
      ``vocab.txt``; optionally ``modules.json``, ``sentence_bert_config.json``,
      ``tokenizer_config.json`` and ``1_Pooling/config.json``). With a
      ``modules.json`` naming a subdirectory for the Transformer module (older
      sentence-transformers layouts), the model files are read from there.
    dtype: compute dtype.
    param_dtype: dtype of the parameters.
    max_length: truncation length in tokens; default ``max_seq_length`` of
      ``sentence_bert_config.json`` (256 for all-MiniLM-L6-v2), capped at
      ``max_position_embeddings``.
    progress: show a progress bar while loading.

  Returns:
    A :class:`SentenceEncoder` (``.model``, ``.tokenizer``, ``.encode(...)``).

  Example:
    >>> import json, pathlib, tempfile
    >>> from flax import nnx
    >>> import jaxfp4.io
    >>> from jaxfp4.models import bert
    >>> tmp = tempfile.TemporaryDirectory()   # a tiny random BERT directory, as transformers saves one
    >>> d = pathlib.Path(tmp.name)
    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "."]
    >>> _ = (d / "vocab.txt").write_text("\\n".join(words))
    >>> _ = (d / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": len(words),
    ...     "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}))
    >>> tiny = bert.BertModel(bert.BertConfig.from_file(d), rngs=nnx.Rngs(0))
    >>> hf_name = lambda p: ".".join(map(str, p[:-1] + (("weight",) if p[-1] in ("kernel", "embedding") else p[-1:])))
    >>> _ = jaxfp4.io.write_safetensors(d / "model.safetensors", {hf_name(p): v.get_value().T if p[-1] == "kernel"
    ...     else v.get_value() for p, v in nnx.iter_graph(tiny) if isinstance(v, nnx.Param)})
    >>> enc = bert.from_pretrained(d)              # e.g. an all-MiniLM-L6-v2/ directory
    >>> (enc.encode(["A cat.", "A dog."]) @ enc.encode(["A cat."]).T).shape   # cosine similarities
    (2, 1)
    >>> tmp.cleanup()
  """
  path = Path(path)
  transformer_dir, pooling_file, normalize = read_pipeline(path)
  config = BertConfig.from_file(transformer_dir)
  if pooling_file is not None:
    check_pooling(pooling_file, config.hidden_size)
  # The Transformer module's directory holds vocab.txt and sentence_bert_config.json.
  tokenizer = WordPieceTokenizer.from_pretrained(transformer_dir, max_length=max_length)
  top = max(tokenizer.vocab.values())
  if top >= config.vocab_size:
    raise ValueError(f"{transformer_dir / 'vocab.txt'} has token id {top}, but the model's vocab_size is "
                     f"{config.vocab_size}.")
  tokenizer.max_length = min(tokenizer.max_length, config.max_position_embeddings)
  model = load_model(transformer_dir, dtype=dtype, param_dtype=param_dtype, progress=progress)
  return SentenceEncoder(model=model, tokenizer=tokenizer, normalize=normalize)
