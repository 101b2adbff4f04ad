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
    >>> model = from_pretrained("llama-3.2-1b-bnb-4bit")           # doctest: +SKIP
  """
  if "model_class" in options:
    raise ValueError("`model_class` is fixed to LlamaForCausalLM here; use "
                     "jaxfp4.models.decoder.from_pretrained to choose it.")
  return cast(LlamaForCausalLM, loader.from_pretrained(path, model_class=LlamaForCausalLM, **options))


def save_pretrained(model: LlamaForCausalLM, out_dir: str | os.PathLike, **options: Any) -> Path:
  """Writes ``model`` as a Hugging Face directory (``jaxfp4.models.decoder.save_pretrained``).

  Example:
    >>> save_pretrained(model, "llama-nf4")                         # doctest: +SKIP
  """
  if not isinstance(model, LlamaForCausalLM):
    raise ValueError(f"`model` must be a LlamaForCausalLM, got {type(model).__name__}.")
  return loader.save_pretrained(model, out_dir, **options)
