"""Quantization-aware training primitives.

``fake_quantize`` (quantize-dequantize with a straight-through or Wang et al.'s
differentiable gradient estimator), the random Hadamard transform used by the
NVFP4 and MXFP4 training recipes, Wang et al.'s outlier clamping with
high-precision compensation, and learned per-block scales with LSQ's gradients
(``fake_quantize_learned``).
"""

from jaxfp4._src.training.fake_quant import dge_derivative as dge_derivative
from jaxfp4._src.training.fake_quant import fake_quantize as fake_quantize
from jaxfp4._src.training.fp4_linear import RECIPES as RECIPES
from jaxfp4._src.training.fp4_linear import Recipe as Recipe
from jaxfp4._src.training.fp4_linear import fp4_matmul as fp4_matmul
from jaxfp4._src.training.hadamard import hadamard_matrix as hadamard_matrix
from jaxfp4._src.training.hadamard import random_hadamard_transform as random_hadamard_transform
from jaxfp4._src.training.learned_scale import fake_quantize_learned as fake_quantize_learned
from jaxfp4._src.training.learned_scale import init_learned_scales as init_learned_scales
from jaxfp4._src.training.learned_scale import quantize_4bit_learned as quantize_4bit_learned
from jaxfp4._src.training.outliers import clamp_outliers as clamp_outliers
from jaxfp4._src.training.outliers import compensated_matmul as compensated_matmul

__all__ = ("RECIPES", "Recipe", "clamp_outliers", "compensated_matmul", "dge_derivative", "fake_quantize",
           "fake_quantize_learned", "fp4_matmul", "hadamard_matrix", "init_learned_scales", "quantize_4bit_learned",
           "random_hadamard_transform")
