"""A compact Flax NNX Llama that loads Hugging Face checkpoints, dense or bitsandbytes 4-bit.

Example:
  >>> from jaxfp4.models import llama                              # doctest: +SKIP
  >>> model = llama.from_pretrained("Llama-3.2-1B-bnb-4bit")       # doctest: +SKIP
  >>> tokens = llama.generate(model, prompt_ids, max_new_tokens=32)  # doctest: +SKIP
"""

from jaxfp4._src.models.llama.config import LlamaConfig as LlamaConfig
from jaxfp4._src.models.llama.generate import GenerateFns as GenerateFns
from jaxfp4._src.models.llama.generate import generate as generate
from jaxfp4._src.models.llama.generate import make_generate_fns as make_generate_fns
from jaxfp4._src.models.llama.generate import sample_logits as sample_logits
from jaxfp4._src.models.llama.loader import from_pretrained as from_pretrained
from jaxfp4._src.models.llama.loader import save_pretrained as save_pretrained
from jaxfp4._src.models.llama.model import KVCache as KVCache
from jaxfp4._src.models.llama.model import LlamaForCausalLM as LlamaForCausalLM
from jaxfp4._src.models.llama.model import init_cache as init_cache

__all__ = ("GenerateFns", "KVCache", "LlamaConfig", "LlamaForCausalLM", "from_pretrained",
           "generate", "init_cache", "make_generate_fns", "sample_logits", "save_pretrained")
