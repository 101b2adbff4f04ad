"""Loading and saving decoders as Hugging Face model directories.

``from_pretrained`` reads a transformers directory of any family in
``families.FAMILIES`` (or a Hub repo id, resolved through huggingface_hub's
cache, ``jaxfp4._src.io.hub``): dense safetensors, or
a bitsandbytes 4-bit checkpoint (``quantization_config`` in ``config.json``,
bnb tensor groups in the files, bnb_format.md §5-6). A layer is 4-bit exactly
when the checkpoint holds a bitsandbytes group for its weight, so modules that
transformers kept in high precision (``lm_head``, skip lists) stay as they are,
and nothing is re-quantized. The model is built abstractly (``nnx.eval_shape``)
and filled tensor by tensor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, cast

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxfp4._src.flax.nnx_dense import Dense4bit
from jaxfp4._src.flax.quantize_model import _matcher
from jaxfp4._src.flax import hf_layout
from jaxfp4._src.io import checkpoint, hub, shards
from jaxfp4._src.io.files import refuse_nonempty_dir
from jaxfp4._src.models.decoder.config import DecoderConfig
from jaxfp4._src.models.decoder.model import DecoderForCausalLM
from jaxfp4._src.quantize import quantize_4bit
from jaxfp4._src.progress import bar as progress_bar
from jaxfp4._src.sharding import plan as sharding_plan
from jaxfp4._src.sharding.plan import ShardingPlan


def from_pretrained(
    path: str | os.PathLike,
    *,
    revision: str | None = None,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    dtype: Any = None,
    param_dtype: Any = None,
    quant_type: str | None = None,
    blocksize: int | None = None,
    compress_statistics: bool = False,
    skip: Sequence[str] = ("lm_head",),
    implementation: str | None = None,
    remat: bool = False,
    progress: bool = False,
    mesh: Mesh | None = None,
    plan: ShardingPlan | None = None,
    model_class: type[DecoderForCausalLM] = DecoderForCausalLM,
) -> DecoderForCausalLM:
  """Loads a Hugging Face decoder (dense or bitsandbytes 4-bit) of any supported family.

  Args:
    path: directory with ``config.json`` and ``model.safetensors`` (or shards),
      or a Hub repo id ``"org/name"`` resolved through huggingface_hub's cache.
    revision, local_files_only, cache_dir: for a repo id: the revision, no
      network (None: as ``HF_HUB_OFFLINE`` says), the hub cache (None:
      huggingface_hub's default).
    dtype: compute dtype; None: the checkpoint's ``bnb_4bit_compute_dtype`` if
      4-bit, else its ``dtype`` (bfloat16 if unrecorded).
    param_dtype: dtype of the dense parameters; None: the checkpoint's dtype.
    quant_type: quantize a dense checkpoint's linear layers on load
      (``"nf4"``, ``"fp4"``, ...); None loads the checkpoint as stored.
    blocksize, compress_statistics, skip: options for ``quant_type``; ``skip``
      names modules kept dense.
    implementation: ``matmul_4bit``'s implementation for the 4-bit layers.
    remat: gradient checkpointing per decoder layer (for training).
    progress: show a progress bar.
    mesh, plan: place the model on ``mesh`` as ``plan`` says
      (:func:`tensor_parallel_plan`, :func:`fsdp_plan`): each tensor is read
      through a memory map and every device receives only its own shard, so
      no device ever holds a whole weight.
    model_class: the class built (``LlamaForCausalLM`` accepts Llama only).

  Returns:
    A ``model_class`` instance.

  Example:
    >>> import tempfile, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxfp4.models import decoder
    >>> config = decoder.DecoderConfig(model_type="qwen2", vocab_size=128, hidden_size=64,
    ...                                intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)
    >>> tmp = tempfile.TemporaryDirectory()   # a tiny random Qwen2, written as HF writes one
    >>> path = decoder.save_pretrained(decoder.DecoderForCausalLM(config, rngs=nnx.Rngs(0)),
    ...                                tmp.name + "/tiny", progress=False)
    >>> model = decoder.from_pretrained(path, quant_type="nf4", progress=False)  # or a Hub repo id
    >>> logits, _ = model(jnp.array([[1, 2, 3]]))
    >>> logits.shape
    (1, 3, 128)
    >>> tmp.cleanup()
  """
  if (mesh is None) != (plan is None):
    raise ValueError("`mesh` and `plan` go together: give both to load the model sharded, or neither.")
  if isinstance(skip, str):
    skip = (skip,)
  if not isinstance(skip, (tuple, list)) or not all(isinstance(s, str) for s in skip):
    raise ValueError(f"`skip` must be a module name or a sequence of names/globs, got {skip!r}.")
  path = hub.resolve(path, revision=revision, local_files_only=local_files_only, cache_dir=cache_dir)
  hf = checkpoint.read_config(path)
  config = model_class.config_class.from_hf(hf)
  bnb = checkpoint.bnb_quantization(hf)
  stored = hf.get("dtype", hf.get("torch_dtype"))
  if param_dtype is None:
    param_dtype = stored or "bfloat16"
  if dtype is None:
    dtype = (bnb or {}).get("compute_dtype") or stored or "bfloat16"
  param_dtype = checkpoint.model_dtype("param_dtype", param_dtype)
  dtype = checkpoint.model_dtype("dtype", dtype)
  with checkpoint.Checkpoint(path) as ckpt:
    quantized = set(ckpt.quantized_weights())
    if bnb is not None and not quantized:
      raise ValueError(f"{path}/config.json has a bitsandbytes quantization_config but the "
                       "safetensors hold no 4-bit tensor group.")
    if quant_type is not None and quantized:
      raise ValueError(f"{str(path)!r} is already 4-bit; `quant_type` must be None to load it.")
    states = {w: ckpt.get_quant_state(w) for w in quantized}
    skipped = _matcher(tuple(skip))

    def linear(module: str, in_features: int, out_features: int, use_bias: bool) -> nnx.Module:
      key = module + ".weight"
      rngs = nnx.Rngs(0)
      if key in quantized:
        info = ckpt.info(key)
        try:
          return Dense4bit(in_features, out_features, use_bias=use_bias, dtype=dtype,
                           param_dtype=param_dtype, implementation=implementation, rngs=rngs,
                           quantized=(jnp.zeros(info.shape, info.dtype), states[key]))
        except ValueError as e:
          raise ValueError(f"{path}: tensor {key!r}: {e}") from None
      # `skip` is a tuple of patterns here, which never look at the module (not built yet).
      if quant_type is not None and not skipped(module, cast(Any, None)):
        return Dense4bit(in_features, out_features, use_bias=use_bias, dtype=dtype,
                         param_dtype=param_dtype, quant_type=quant_type, blocksize=blocksize,
                         compress_statistics=compress_statistics, implementation=implementation,
                         rngs=rngs)
      return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype,
                        param_dtype=param_dtype, rngs=rngs)

    model = nnx.eval_shape(lambda: model_class(
        config, dtype=dtype, param_dtype=param_dtype, linear=linear, rngs=nnx.Rngs(0), remat=remat))

    def quantizer(key, w):
      assert quant_type is not None  # only passed on when quant_type is set
      return quantize_4bit(jnp.asarray(w, param_dtype), quant_type=quant_type, blocksize=blocksize,
                           compress_statistics=compress_statistics)

    def ignore(key: str) -> bool:
      # Old transformers saved RoPE buffers; a tied lm_head may be saved too.
      return key.endswith("rotary_emb.inv_freq") or (
          config.tie_word_embeddings and key == "lm_head.weight")

    targets = None
    if mesh is not None and plan is not None:  # checked above: both or neither
      from jaxfp4._src.models.llama import parallel  # its plans name the decoder's projections
      parallel.check_plan(config, mesh, plan)
      targets = sharding_plan.assign(model, mesh, plan)
    hf_layout.load_hf_weights(model, ckpt, quantizer=quantizer if quant_type else None,
                              ignore=ignore, progress=progress, targets=targets)
  return model


def save_pretrained(
    model: DecoderForCausalLM,
    out_dir: str | os.PathLike,
    *,
    max_shard_size: int | str | None = "5GB",
    base_model: str | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
  """Writes ``model`` as a Hugging Face directory that transformers (+ bitsandbytes) loads.

  4-bit layers become bitsandbytes tensor groups and ``config.json`` gets the
  matching ``quantization_config``; merge LoRA adapters first
  (``jaxfp4.nnx.merge_lora``) or save them apart (``jaxfp4.nnx.save_adapters``).
  A ``README.md`` model card notes the quantization.

  Args:
    model: the model.
    out_dir: a new or empty directory; it appears only once complete.
    max_shard_size: bytes per safetensors shard (int, or ``"5GB"``-style as
      transformers takes it); more than one shard adds
      ``model.safetensors.index.json``. None: one file.
    base_model: the Hub id the weights came from, for the model card.
    progress: show a progress bar.
    overwrite: replace ``out_dir`` if it holds a checkpoint (a ``config.json``),
      as a training loop saving every N steps does; the old directory stays
      whole until the new one is complete. Anything else there is refused.

  Returns:
    The directory.

  Example:
    >>> import tempfile, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxfp4.models import decoder
    >>> config = decoder.DecoderConfig(model_type="qwen2", vocab_size=128, hidden_size=64,
    ...                                intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)
    >>> tmp = tempfile.TemporaryDirectory()   # a tiny random Qwen2, written as HF writes one
    >>> path = decoder.save_pretrained(decoder.DecoderForCausalLM(config, rngs=nnx.Rngs(0)),
    ...                                tmp.name + "/tiny", progress=False)
    >>> model = decoder.from_pretrained(path, quant_type="nf4", progress=False)
    >>> out = decoder.save_pretrained(model, tmp.name + "/tiny-nf4", max_shard_size="40KB",
    ...                               progress=False)
    >>> (out / "model.safetensors.index.json").is_file()     # more than one shard
    True
    >>> tmp.cleanup()
  """
  if not isinstance(model, DecoderForCausalLM):
    raise ValueError(f"`model` must be a DecoderForCausalLM (or LlamaForCausalLM), got {type(model).__name__}.")
  out_dir = Path(out_dir)
  shards.parse_size(max_shard_size)  # bad sizes fail before any work
  refuse_nonempty_dir(out_dir, overwrite=overwrite, marker="config.json")  # before any work
  layers = [n for _, n in nnx.iter_graph(model) if isinstance(n, Dense4bit)]
  denest = False
  hf = model.config.to_hf()
  dense = [n for _, n in nnx.iter_graph(model) if isinstance(n, nnx.Linear)]
  hf["dtype"] = jnp.dtype(dense[0].param_dtype if dense else model.model.embed_tokens.param_dtype).name
  if layers:
    states = {(s.quant_type, s.blocksize, s.nested, jnp.dtype(l.weight.get_value().dtype).name)
              for l in layers for s in [l.quant_state.get_value()]}
    if len({(q, b, st) for q, b, _, st in states}) == 1 and len(states) == 2:
      # Sharding stored some layers' absmax decoded (jaxfp4.sharding.shard_4bit); the
      # others are written decoded too: the same weights, one quantization_config.
      denest = True
      states = {(q, b, False, st) for q, b, _, st in states}
    if len(states) != 1 or next(iter(states))[0] not in ("nf4", "fp4"):
      raise ValueError("bitsandbytes checkpoints need every 4-bit layer in one nf4 or fp4 format "
                       f"(one quantization_config); the model has {sorted(states)}.")
    qt, _, nested, storage = next(iter(states))
    quantized_paths = set(hf_layout.quantized_layers(model))
    skipped = sorted(s for path, n in nnx.iter_graph(model) for s in [".".join(map(str, path))]
                     if isinstance(n, nnx.Linear) and s not in quantized_paths)
    hf["quantization_config"] = checkpoint.bnb_quantization_config(
        quant_type=qt, compress_statistics=nested, compute_dtype=model.dtype.name,
        quant_storage=storage, skip_modules=[p.rsplit(".", 1)[-1] for p in skipped] and sorted(
            {p.rsplit(".", 1)[-1] for p in skipped}))
  card = shards.model_card(name=out_dir.name, architecture=hf["architectures"][0],
                           quantization=hf.get("quantization_config"), base_model=base_model)
  return shards.write_pretrained(
      out_dir, _progress(hf_layout.hf_tensors(model, denest=denest), progress), config=hf,
      max_shard_size=max_shard_size, model_card=card, metadata={"format": "pt"}, overwrite=overwrite)


def _progress(items, enabled: bool):
  return progress_bar(items, enabled=enabled, desc="save", unit="tensor")


