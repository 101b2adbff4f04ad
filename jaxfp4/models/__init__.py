"""Models built on jaxfp4's 4-bit layers."""

from jaxfp4._src.extras import require as _require

_require("flax", feature="jaxfp4.models")  # a clear error naming the [flax] extra

from jaxfp4.models import bert as bert
from jaxfp4.models import decoder as decoder
from jaxfp4.models import llama as llama

__all__ = ("bert", "decoder", "llama")
