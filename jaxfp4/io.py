"""Reading and writing safetensors: bitsandbytes 4-bit groups, Hugging Face
checkpoint directories, and quantized NNX models with their LoRA adapters."""

from jaxfp4._src.io.checkpoint import Checkpoint as Checkpoint
from jaxfp4._src.io.checkpoint import tensor_group_4bit as tensor_group_4bit
from jaxfp4._src.io.model_io import load_model as load_model
from jaxfp4._src.io.model_io import save_model as save_model
from jaxfp4._src.io.safetensors import SafetensorsFile as SafetensorsFile
from jaxfp4._src.io.safetensors import TensorInfo as TensorInfo
from jaxfp4._src.io.safetensors import write_safetensors as write_safetensors

__all__ = ("Checkpoint", "SafetensorsFile", "TensorInfo", "load_model", "save_model",
           "tensor_group_4bit", "write_safetensors")
