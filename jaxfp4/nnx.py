"""Flax NNX layers and model transforms for 4-bit weights.

``Dense4bit`` is a 4-bit ``nnx.Linear`` (optionally with LoRA adapters),
``quantize_model`` converts a model's linear layers (``record_linear_inputs``
collects calibration inputs for its outlier columns; ``calibrate`` scores each
layer's candidate formats for ``jaxfp4.plan_precision`` and
``quantize_model(plan=...)``), ``merge_lora`` folds trained adapters back into
the 4-bit weights; ``repack_model`` puts them in the Mosaic GPU kernel's K order; ``save_adapters``/``load_adapters`` move adapters to and
from PEFT's format.
"""

from jaxfp4._src.extras import require as _require

_require("flax", feature="jaxfp4.nnx")  # a clear error naming the [flax] extra

from jaxfp4._src.calibration.calibrate import calibrate as calibrate
from jaxfp4._src.flax.fp4_dense import FP4Dense as FP4Dense
from jaxfp4._src.flax.fp4_dense import convert_to_fp4 as convert_to_fp4
from jaxfp4._src.flax.nnx_dense import Dense4bit as Dense4bit
from jaxfp4._src.flax.nnx_dense import QuantizedWeight as QuantizedWeight
from jaxfp4._src.flax.nnx_dense import add_lora as add_lora
from jaxfp4._src.flax.nnx_dense import apply_shared_input as apply_shared_input
from jaxfp4._src.flax.nnx_dense import merge_lora as merge_lora
from jaxfp4._src.flax.nnx_dense import repack_model as repack_model
from jaxfp4._src.flax.nnx_dense import target_matcher as target_matcher
from jaxfp4._src.flax.peft import load_adapters as load_adapters
from jaxfp4._src.flax.peft import save_adapters as save_adapters
from jaxfp4._src.flax.quantize_model import LayerReport as LayerReport
from jaxfp4._src.flax.quantize_model import QuantizeReport as QuantizeReport
from jaxfp4._src.flax.quantize_model import quantize_model as quantize_model
from jaxfp4._src.flax.quantize_model import record_linear_inputs as record_linear_inputs

__all__ = ("Dense4bit", "FP4Dense", "convert_to_fp4", "add_lora", "apply_shared_input", "LayerReport", "QuantizeReport", "QuantizedWeight", "calibrate", "load_adapters", "merge_lora", "quantize_model",
           "record_linear_inputs", "repack_model", "save_adapters", "target_matcher")
