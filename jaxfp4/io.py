"""Reading and writing safetensors: bitsandbytes 4-bit groups, Hugging Face
checkpoint directories, and quantized NNX models with their LoRA adapters.

The tensor IO needs only numpy and ml_dtypes; ``load_model`` and ``save_model``
move Flax NNX models and load Flax on first use (PEP 562 module ``__getattr__``),
so ``import jaxfp4.io`` works without the ``[flax]`` extra.
"""

from jaxfp4._src.io.checkpoint import Checkpoint as Checkpoint
from jaxfp4._src.io.checkpoint import tensor_group_4bit as tensor_group_4bit
from jaxfp4._src.io.safetensors import SafetensorsFile as SafetensorsFile
from jaxfp4._src.io.safetensors import TensorInfo as TensorInfo
from jaxfp4._src.io.safetensors import write_safetensors as write_safetensors

from jaxfp4._src.extras import lazy_attributes

__getattr__, __dir__ = lazy_attributes("jaxfp4.io", {
    "load_model": ("jaxfp4._src.flax.model_io", "load_model"),
    "save_model": ("jaxfp4._src.flax.model_io", "save_model"),
}, globals())


__all__ = ("Checkpoint", "SafetensorsFile", "TensorInfo", "load_model", "save_model",
           "tensor_group_4bit", "write_safetensors")
