"""Quantization error analysis: metrics, the four-panel figure and weight-file reading.

Example:
  >>> import numpy as np
  >>> from jaxfp4 import analysis
  >>> x = np.random.default_rng(0).normal(0, 0.5, 50).astype(np.float32)
  >>> r = analysis.error_report(x, quant_type="fp4")
  >>> r.bytes_before, r.bytes_after
  (200, 29)
"""

from jaxfp4._src.analysis.figure import plot_analysis as plot_analysis
from jaxfp4._src.analysis.metrics import ErrorReport as ErrorReport
from jaxfp4._src.analysis.metrics import compare_formats as compare_formats
from jaxfp4._src.analysis.metrics import error_report as error_report
from jaxfp4._src.analysis.metrics import format_options as format_options
from jaxfp4._src.analysis.metrics import format_table as format_table
from jaxfp4._src.analysis.metrics import quantize_roundtrip as quantize_roundtrip
from jaxfp4._src.analysis.metrics import report_from_roundtrip as report_from_roundtrip
from jaxfp4._src.analysis.weights import TensorInfo as TensorInfo
from jaxfp4._src.analysis.weights import iter_float_tensors as iter_float_tensors
from jaxfp4._src.analysis.weights import list_tensors as list_tensors

__all__ = (
    "ErrorReport",
    "TensorInfo",
    "compare_formats",
    "error_report",
    "format_options",
    "format_table",
    "iter_float_tensors",
    "list_tensors",
    "plot_analysis",
    "quantize_roundtrip",
    "report_from_roundtrip",
)
