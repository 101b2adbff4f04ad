"""jaxfp4: bitsandbytes-compatible 4-bit (NF4/FP4) and OCP/NVIDIA FP4 quantization for JAX.

Please use the names re-exported here; ``jaxfp4._src`` is not public API.
"""

from jaxfp4._src.formats import QUANT_TYPES as QUANT_TYPES
from jaxfp4._src.gptq import quantize_4bit_gptq as quantize_4bit_gptq
from jaxfp4._src.hqq import quantize_4bit_hqq as quantize_4bit_hqq
from jaxfp4._src.matmul import matmul_4bit as matmul_4bit
from jaxfp4._src.matmul_group import matmul_4bit_group as matmul_4bit_group
from jaxfp4._src.outlier_columns import OutlierColumns as OutlierColumns
from jaxfp4._src.outlier_columns import dequantize_4bit_with_outliers as dequantize_4bit_with_outliers
from jaxfp4._src.outlier_columns import quantize_4bit_with_outliers as quantize_4bit_with_outliers
from jaxfp4._src.outlier_columns import select_outlier_columns as select_outlier_columns
from jaxfp4._src.packing import pack_nibbles as pack_nibbles
from jaxfp4._src.packing import unpack_nibbles as unpack_nibbles
from jaxfp4._src.quantize import block_scales as block_scales
from jaxfp4._src.quantize import dequantize_4bit as dequantize_4bit
from jaxfp4._src.quantize import dequantize_fp4 as dequantize_fp4
from jaxfp4._src.quantize import dequantize_nf4 as dequantize_nf4
from jaxfp4._src.quantize import quantize_4bit as quantize_4bit
from jaxfp4._src.quantize import quantize_fp4 as quantize_fp4
from jaxfp4._src.quantize import quantize_nf4 as quantize_nf4
from jaxfp4._src.repack import repack_4bit as repack_4bit
from jaxfp4._src.state import NestedState as NestedState
from jaxfp4._src.state import QuantState as QuantState
from jaxfp4._src.version import __version__ as __version__

# Calibration and analysis run Flax models; they are imported on first use so
# that ``import jaxfp4`` (formats, quantize, state, matmul) needs neither Flax
# nor optax (PEP 562 module ``__getattr__``).
_LAZY = {
    "analysis": ("jaxfp4.analysis", None),
    "calibrate": ("jaxfp4._src.calibration.calibrate", "calibrate"),
    "quantize_4bit_clipped": ("jaxfp4._src.calibration.clipping", "quantize_4bit_clipped"),
    "search_clip": ("jaxfp4._src.calibration.clipping", "search_clip"),
    "PlanEntry": ("jaxfp4._src.calibration.plan", "PlanEntry"),
    "PrecisionPlan": ("jaxfp4._src.calibration.plan", "PrecisionPlan"),
    "plan_precision": ("jaxfp4._src.calibration.plan", "plan_precision"),
    "quantize_pretrained": ("jaxfp4._src.models.decoder.quantize_pretrained", "quantize_pretrained"),
    "CalibrationReport": ("jaxfp4._src.calibration.report", "CalibrationReport"),
    "CandidateResult": ("jaxfp4._src.calibration.report", "CandidateResult"),
    "LayerCalibration": ("jaxfp4._src.calibration.report", "LayerCalibration"),
}


from jaxfp4._src.extras import lazy_attributes  # noqa: E402

__getattr__, __dir__ = lazy_attributes("jaxfp4", _LAZY, globals())

__all__ = (
    "QUANT_TYPES",
    "CalibrationReport",
    "CandidateResult",
    "LayerCalibration",
    "NestedState",
    "OutlierColumns",
    "PlanEntry",
    "PrecisionPlan",
    "QuantState",
    "__version__",
    "analysis",
    "block_scales",
    "calibrate",
    "dequantize_4bit",
    "dequantize_4bit_with_outliers",
    "dequantize_fp4",
    "dequantize_nf4",
    "matmul_4bit",
    "matmul_4bit_group",
    "pack_nibbles",
    "plan_precision",
    "quantize_4bit",
    "quantize_4bit_clipped",
    "quantize_4bit_gptq",
    "quantize_4bit_hqq",
    "quantize_4bit_with_outliers",
    "quantize_fp4",
    "quantize_nf4",
    "repack_4bit",
    "quantize_pretrained",
    "search_clip",
    "select_outlier_columns",
    "unpack_nibbles",
)
