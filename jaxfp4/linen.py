"""Flax Linen layers for 4-bit weights (the NNX versions are in ``jaxfp4.nnx``)."""

from jaxfp4._src.extras import require as _require

_require("flax", feature="jaxfp4.linen")  # a clear error naming the [flax] extra

from jaxfp4._src.flax.linen_dense import Dense4bit as Dense4bit
from jaxfp4._src.flax.linen_dense import repack_variables as repack_variables

__all__ = ("Dense4bit", "repack_variables")
