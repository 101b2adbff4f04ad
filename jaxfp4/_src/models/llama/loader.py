"""Loading and saving ``LlamaForCausalLM``: the decoder's loader with the Llama classes.

See ``jaxfp4._src.models.decoder.loader`` for the format; this module only
fixes the model class, so a non-Llama ``config.json`` is refused with the
reason (``jaxfp4.models.decoder`` loads the other families).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

from jaxfp4._src.models.decoder import loader
from jaxfp4._src.models.llama.model import LlamaForCausalLM


def from_pretrained(path: str | os.PathLike, **options: Any) -> LlamaForCausalLM:
  """Loads a Hugging Face Llama directory or Hub repo id (dense or bitsandbytes 4-bit).

  Takes the options of ``jaxfp4.models.decoder.from_pretrained`` (``dtype``,
  ``param_dtype``, ``quant_type``, ``blocksize``, ``compress_statistics``,
  ``skip``, ``implementation``, ``remat``, ``progress``, ``mesh``, ``plan``,
  ``revision``, ``local_files_only``).

  Example:
    >>> import tempfile, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxfp4.models import llama
    >>> config = llama.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
    ...                            num_hidden_layers=1, num_attention_heads=2)
    >>> tmp = tempfile.TemporaryDirectory()   # a tiny random Llama, written as HF writes one
    >>> path = llama.save_pretrained(llama.LlamaForCausalLM(config, rngs=nnx.Rngs(0)),
    ...                              tmp.name + "/tiny", progress=False)
    >>> model = llama.from_pretrained(path, quant_type="nf4", progress=False)
    >>> llama.generate(model, jnp.array([[1, 2, 3]]), max_new_tokens=4).shape
    (1, 7)
    >>> tmp.cleanup()
  """
  if "model_class" in options:
    raise ValueError("`model_class` is fixed to LlamaForCausalLM here; use "
                     "jaxfp4.models.decoder.from_pretrained to choose it.")
  return cast(LlamaForCausalLM, loader.from_pretrained(path, model_class=LlamaForCausalLM, **options))


def save_pretrained(model: LlamaForCausalLM, out_dir: str | os.PathLike, **options: Any) -> Path:
  """Writes ``model`` as a Hugging Face directory (``jaxfp4.models.decoder.save_pretrained``).

  Example:
    >>> import tempfile, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxfp4.models import llama
    >>> config = llama.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
    ...                            num_hidden_layers=1, num_attention_heads=2)
    >>> tmp = tempfile.TemporaryDirectory()   # a tiny random Llama, written as HF writes one
    >>> path = llama.save_pretrained(llama.LlamaForCausalLM(config, rngs=nnx.Rngs(0)),
    ...                              tmp.name + "/tiny", progress=False)
    >>> model = llama.from_pretrained(path, quant_type="nf4", progress=False)
    >>> out = llama.save_pretrained(model, tmp.name + "/tiny-nf4", progress=False)  # bnb 4-bit
    >>> sorted(f.name for f in out.iterdir())
    ['README.md', 'config.json', 'model.safetensors']
    >>> tmp.cleanup()
  """
  if not isinstance(model, LlamaForCausalLM):
    raise ValueError(f"`model` must be a LlamaForCausalLM, got {type(model).__name__}.")
  return loader.save_pretrained(model, out_dir, **options)
