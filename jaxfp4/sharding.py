"""Splitting 4-bit weights and whole models over devices with JAX's SPMD partitioner.

``WeightSharding`` says which mesh axes split a packed weight (column parallel,
row parallel on block boundaries, FSDP) and its activations (data parallel);
``shard_4bit`` places a weight shard by shard and ``jaxfp4.matmul_4bit(...,
sharding=ws)`` runs the Pallas kernels per shard inside ``shard_map``.
``ShardingPlan`` and ``shard_model`` do the same for every layer of an NNX
model (``jaxfp4.models.llama.tensor_parallel_plan`` and ``fsdp_plan`` are the
Llama plans).

Example:
  >>> import jax, jax.numpy as jnp, jaxfp4, jaxfp4.sharding
  >>> mesh = jax.make_mesh((1,), ("tp",))
  >>> ws = jaxfp4.sharding.WeightSharding(mesh, out_axis="tp")
  >>> packed, state = jaxfp4.quantize_4bit(jnp.ones((64, 128)), quant_type="nf4")
  >>> packed, state = jaxfp4.sharding.shard_4bit(packed, state, ws)
  >>> jaxfp4.matmul_4bit(jnp.ones((2, 128)), packed, state, sharding=ws).shape
  (2, 64)
"""

from jaxfp4._src.sharding.layout import WeightSharding as WeightSharding
from jaxfp4._src.sharding.layout import flat_view as flat_view
from jaxfp4._src.sharding.layout import shard_4bit as shard_4bit
from jaxfp4._src.sharding.layout import weight_specs as weight_specs

from jaxfp4._src.extras import lazy_attributes

# ShardingPlan and shard_model walk NNX models: they load Flax on first use
# (PEP 562), so the weight-level names above work without the [flax] extra.
__getattr__, __dir__ = lazy_attributes("jaxfp4.sharding", {
    "ShardingPlan": ("jaxfp4._src.sharding.plan", "ShardingPlan"),
    "shard_model": ("jaxfp4._src.sharding.plan", "shard_model"),
}, globals())


__all__ = ("ShardingPlan", "WeightSharding", "flat_view", "shard_4bit", "shard_model", "weight_specs")
