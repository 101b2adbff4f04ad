"""A compact Flax NNX Llama that loads Hugging Face checkpoints, dense or bitsandbytes 4-bit.

Example:
  >>> import tempfile, jax.numpy as jnp
  >>> from flax import nnx
  >>> from jaxfp4.models import llama
  >>> config = llama.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
  ...                            num_hidden_layers=1, num_attention_heads=2)
  >>> tmp = tempfile.TemporaryDirectory()   # a tiny random Llama (a real one: e.g. Llama-3.2-1B-bnb-4bit/)
  >>> path = llama.save_pretrained(llama.LlamaForCausalLM(config, rngs=nnx.Rngs(0)),
  ...                              tmp.name + "/tiny", progress=False)
  >>> model = llama.from_pretrained(path, quant_type="nf4", progress=False)
  >>> prompt_ids = jnp.array([[1, 2, 3]])
  >>> llama.generate(model, prompt_ids, max_new_tokens=4).shape
  (1, 7)
  >>> tmp.cleanup()
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
from jaxfp4._src.models.llama.parallel import batch_sharding as batch_sharding
from jaxfp4._src.models.llama.parallel import causal_lm_loss as causal_lm_loss
from jaxfp4._src.models.llama.parallel import fsdp_plan as fsdp_plan
from jaxfp4._src.models.llama.parallel import qlora_optimizer as qlora_optimizer
from jaxfp4._src.models.llama.parallel import make_qlora_step as make_qlora_step
from jaxfp4._src.models.llama.parallel import shard_llama as shard_llama
from jaxfp4._src.models.llama.parallel import tensor_parallel_plan as tensor_parallel_plan

__all__ = ("GenerateFns", "KVCache", "LlamaConfig", "LlamaForCausalLM", "batch_sharding",
           "causal_lm_loss", "from_pretrained", "fsdp_plan", "generate", "init_cache",
           "make_generate_fns", "make_qlora_step", "qlora_optimizer", "sample_logits",
           "save_pretrained", "shard_llama", "tensor_parallel_plan")
