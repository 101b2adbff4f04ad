"""A Flax NNX decoder for the common Hugging Face families, dense or bitsandbytes 4-bit.

Llama (3.x RoPE scaling), Mistral, Qwen2/2.5, Qwen3, Gemma, Gemma 2, Gemma 3
(text), Phi-3: one implementation driven by ``config.json``. Other families
and features (MoE, YaRN/LongRoPE, partial rotary, multimodal) are refused with
the reason. ``from_pretrained`` takes a directory or a Hub repo id.

Example:
  >>> import tempfile, jax.numpy as jnp
  >>> from flax import nnx
  >>> from jaxfp4.models import decoder
  >>> config = decoder.DecoderConfig(model_type="qwen2", vocab_size=128, hidden_size=64,
  ...                                intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)
  >>> tmp = tempfile.TemporaryDirectory()   # a tiny random Qwen2 (a real one: a directory or Hub repo id)
  >>> path = decoder.save_pretrained(decoder.DecoderForCausalLM(config, rngs=nnx.Rngs(0)),
  ...                                tmp.name + "/tiny", progress=False)
  >>> model = decoder.from_pretrained(path, quant_type="nf4", progress=False)
  >>> prompt_ids = jnp.array([[1, 2, 3]])
  >>> decoder.generate(model, prompt_ids, max_new_tokens=4).shape
  (1, 7)
  >>> tmp.cleanup()
"""

from jaxfp4._src.models.decoder.config import DecoderConfig as DecoderConfig
from jaxfp4._src.models.decoder.families import FAMILIES as FAMILIES
from jaxfp4._src.models.decoder.families import REFUSED as REFUSED
from jaxfp4._src.models.decoder.generate import GenerateFns as GenerateFns
from jaxfp4._src.models.decoder.generate import generate as generate
from jaxfp4._src.models.decoder.generate import make_generate_fns as make_generate_fns
from jaxfp4._src.models.decoder.generate import sample_logits as sample_logits
from jaxfp4._src.models.decoder.loader import from_pretrained as from_pretrained
from jaxfp4._src.models.decoder.loader import save_pretrained as save_pretrained
from jaxfp4._src.models.decoder.model import DecoderForCausalLM as DecoderForCausalLM
from jaxfp4._src.models.decoder.model import KVCache as KVCache
from jaxfp4._src.models.decoder.model import init_cache as init_cache
from jaxfp4._src.models.decoder.quantize_pretrained import METHODS as QUANTIZE_METHODS
from jaxfp4._src.models.decoder.quantize_pretrained import QuantizePretrainedReport as QuantizePretrainedReport
from jaxfp4._src.models.decoder.quantize_pretrained import quantize_pretrained as quantize_pretrained

__all__ = ("DecoderConfig", "DecoderForCausalLM", "FAMILIES", "GenerateFns", "KVCache", "QUANTIZE_METHODS", "QuantizePretrainedReport", "REFUSED",
           "from_pretrained", "generate", "init_cache", "make_generate_fns", "quantize_pretrained", "sample_logits",
           "save_pretrained")
