"""``LlamaForCausalLM``: the decoder (``jaxfp4._src.models.decoder``) with a Llama config.

Attribute paths mirror Hugging Face's parameter names: the checkpoint key
``model.layers.3.self_attn.q_proj.weight`` is the kernel (transposed: Flax
kernels are ``[in, out]``) of ``model.layers[3].self_attn.q_proj``. The layers,
the cache and the numerics are the decoder's (see its ``layers`` module).
"""

from __future__ import annotations

from jaxfp4._src.models.decoder.config import DecoderConfig
from jaxfp4._src.models.decoder.layers import Attention as LlamaAttention
from jaxfp4._src.models.decoder.layers import DecoderLayer as LlamaDecoderLayer
from jaxfp4._src.models.decoder.layers import LinearFactory as LinearFactory
from jaxfp4._src.models.decoder.layers import MLP as LlamaMLP
from jaxfp4._src.models.decoder.layers import RMSNorm as LlamaRMSNorm
from jaxfp4._src.models.decoder.model import DecoderForCausalLM
from jaxfp4._src.models.decoder.model import DecoderModel as LlamaModel
from jaxfp4._src.models.decoder.model import KVCache as KVCache
from jaxfp4._src.models.decoder.model import init_cache as init_cache
from jaxfp4._src.models.decoder.model import rope_inv_freq as rope_inv_freq
from jaxfp4._src.models.llama.config import LlamaConfig

__all__ = ("KVCache", "LinearFactory", "LlamaAttention", "LlamaDecoderLayer", "LlamaForCausalLM", "LlamaMLP",
           "LlamaModel", "LlamaRMSNorm", "init_cache", "rope_inv_freq", "DecoderConfig")


class LlamaForCausalLM(DecoderForCausalLM):
  """transformers' ``LlamaForCausalLM`` in Flax NNX: a decoder whose config is a
  :class:`LlamaConfig` (same arguments as ``DecoderForCausalLM``).

  Example:
    >>> from flax import nnx
    >>> model = LlamaForCausalLM(LlamaConfig.tiny(num_hidden_layers=1), rngs=nnx.Rngs(0))
    >>> model.lm_head.kernel.shape
    (128, 512)
  """

  config_class = LlamaConfig
