"""Quantization-aware training primitives.

``fake_quantize`` (quantize-dequantize with a straight-through or Wang et al.'s
differentiable gradient estimator), the random Hadamard transform used by the
NVFP4 and MXFP4 training recipes, and Wang et al.'s outlier clamping with
high-precision compensation.
"""

from jaxfp4._src.training.fake_quant import dge_derivative as dge_derivative
from jaxfp4._src.training.fake_quant import fake_quantize as fake_quantize
from jaxfp4._src.training.fp4_linear import RECIPES as RECIPES
from jaxfp4._src.training.fp4_linear import Recipe as Recipe
from jaxfp4._src.training.fp4_linear import fp4_matmul as fp4_matmul
from jaxfp4._src.training.hadamard import hadamard_matrix as hadamard_matrix
from jaxfp4._src.training.hadamard import random_hadamard_transform as random_hadamard_transform
from jaxfp4._src.training.outliers import clamp_outliers as clamp_outliers
from jaxfp4._src.training.outliers import compensated_matmul as compensated_matmul

__all__ = ("RECIPES", "Recipe", "clamp_outliers", "compensated_matmul", "dge_derivative", "fake_quantize", "fp4_matmul",
           "hadamard_matrix", "random_hadamard_transform")
