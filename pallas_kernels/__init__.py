"""Pallas GPU kernels for packed 4-bit data, each beside its pure-jnp reference.

Nothing outside this package imports ``jax.experimental.pallas``. The kernels are
``pl.pallas_call`` kernels lowered through Triton, except ``wgmma_4bit`` (Pallas Mosaic GPU,
Hopper).
"""

from pallas_kernels._src.dequantize_4bit.api import dequantize_blocks as dequantize_blocks
from pallas_kernels._src.dequantize_4bit.config import DequantizeConfig as DequantizeConfig
from pallas_kernels._src.dequantize_4bit.reference import (
    dequantize_blocks_reference as dequantize_blocks_reference)
from pallas_kernels._src.dequantize_4bit.triton import (
    dequantize_blocks_triton as dequantize_blocks_triton)
from pallas_kernels._src.lut_matmul.api import matmul_lut as matmul_lut
from pallas_kernels._src.lut_matmul.api import matmul_lut_group as matmul_lut_group
from pallas_kernels._src.lut_matmul.config import LutConfig as LutConfig
from pallas_kernels._src.lut_matmul.gemv import (
    gemv_4bit_group_triton as gemv_4bit_group_triton)
from pallas_kernels._src.lut_matmul.gemv import gemv_4bit_triton as gemv_4bit_triton
from pallas_kernels._src.lut_matmul.gemv_t import gemv_t_4bit_triton as gemv_t_4bit_triton
from pallas_kernels._src.lut_matmul.gemv_t import gemv_t_reference as gemv_t_reference
from pallas_kernels._src.lut_matmul.mma import mma_4bit_group_triton as mma_4bit_group_triton
from pallas_kernels._src.lut_matmul.mma import mma_4bit_triton as mma_4bit_triton
from pallas_kernels._src.lut_matmul.mma_t import mma_t_4bit_triton as mma_t_4bit_triton
from pallas_kernels._src.lut_matmul.reference import (
    lut_matmul_reference as lut_matmul_reference)
from pallas_kernels._src.lut_matmul.wgmma import WgmmaConfig as WgmmaConfig
from pallas_kernels._src.lut_matmul.wgmma import wgmma_4bit as wgmma_4bit
from pallas_kernels._src.matmul_4bit.api import matmul_packed as matmul_packed
from pallas_kernels._src.matmul_4bit.config import MatmulConfig as MatmulConfig
from pallas_kernels._src.matmul_4bit.reference import (
    decode_weight_reference as decode_weight_reference)
from pallas_kernels._src.matmul_4bit.reference import (
    matmul_4bit_reference as matmul_4bit_reference)
from pallas_kernels._src.matmul_4bit.triton import matmul_4bit_triton as matmul_4bit_triton
from pallas_kernels._src.matmul_4bit.weight import PackedWeight as PackedWeight
from pallas_kernels._src.matmul_4bit.weight import WeightFormat as WeightFormat
from pallas_kernels._src.numerics import canonical_nan as canonical_nan
from pallas_kernels._src.numerics import flush_subnormals as flush_subnormals
from pallas_kernels._src.numerics import mul_ftz as mul_ftz
from pallas_kernels._src.quantize_8bit.api import quantize_8bit_blocks as quantize_8bit_blocks
from pallas_kernels._src.quantize_8bit.reference import (
    quantize_8bit_blocks_reference as quantize_8bit_blocks_reference)
from pallas_kernels._src.quantize_8bit.triton import (
    quantize_8bit_blocks_triton as quantize_8bit_blocks_triton)
from pallas_kernels._src.quantize_4bit.api import quantize_blocks as quantize_blocks
from pallas_kernels._src.quantize_4bit.config import QuantizeConfig as QuantizeConfig
from pallas_kernels._src.quantize_4bit.reference import (
    quantize_blocks_reference as quantize_blocks_reference)
from pallas_kernels._src.quantize_4bit.triton import (
    quantize_blocks_triton as quantize_blocks_triton)

__all__ = (
    "canonical_nan",
    "gemv_4bit_group_triton",
    "gemv_4bit_triton",
    "gemv_t_4bit_triton",
    "gemv_t_reference",
    "LutConfig",
    "lut_matmul_reference",
    "matmul_lut",
    "matmul_lut_group",
    "mma_4bit_group_triton",
    "mma_4bit_triton",
    "mma_t_4bit_triton",
    "WgmmaConfig",
    "wgmma_4bit",
    "DequantizeConfig",
    "MatmulConfig",
    "PackedWeight",
    "WeightFormat",
    "decode_weight_reference",
    "matmul_4bit_reference",
    "matmul_4bit_triton",
    "matmul_packed",
    "QuantizeConfig",
    "dequantize_blocks",
    "dequantize_blocks_reference",
    "dequantize_blocks_triton",
    "flush_subnormals",
    "mul_ftz",
    "quantize_blocks",
    "quantize_blocks_reference",
    "quantize_8bit_blocks",
    "quantize_8bit_blocks_reference",
    "quantize_8bit_blocks_triton",
    "quantize_blocks_triton",
)
