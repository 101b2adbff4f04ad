"""``matmul_packed``: dispatch between the Triton kernels and the reference."""

from __future__ import annotations

import jax

from pallas_kernels._src import common
from pallas_kernels._src.matmul_4bit import config as config_lib
from pallas_kernels._src.matmul_4bit.reference import matmul_4bit_reference
from pallas_kernels._src.matmul_4bit.triton import matmul_4bit_triton
from pallas_kernels._src.matmul_4bit.weight import PackedWeight, WeightFormat, check_operands


def matmul_packed(
    x: jax.Array,
    w: PackedWeight,
    *,
    fmt: WeightFormat,
    transpose: bool = False,
    bias: jax.Array | None = None,
    implementation: str | None = None,
    config: config_lib.MatmulConfig | None = None,
    interpret: bool | None = None,
) -> jax.Array:
  """``x @ W.T + bias`` (or ``x @ W`` when ``transpose``) against a packed weight.

  Args:
    x: ``[M, K]`` activations (``[M, N]`` output gradients when ``transpose``).
    w: the packed ``W[N, K]``.
    fmt: its static format.
    transpose: compute ``x @ W`` (the input gradient of the forward product).
    bias: optional ``[N]`` added in float32 (forward only).
    implementation: None (the kernel on a GPU), ``"xla"`` or ``"pallas"``
      (interpret mode off the GPU).
    config: launch config (default: tuned for this device kind, or heuristic);
      adjusted to the shape.
    interpret: run the kernel in the Pallas interpreter (default: off the GPU).

  Returns:
    ``[M, N]`` (``[M, K]`` when ``transpose``) in ``x.dtype``.
  """
  check_operands(x, w, fmt, transpose)
  n, k = w.shape
  implementation = common.choose_implementation(
      implementation, config_lib.can_use_kernel(n, k, fmt.blocksize, x.dtype),
      f"The Pallas matmul kernel needs K divisible by the blocksize and float "
      f"activations: got N={n}, K={k}, blocksize={fmt.blocksize}, dtype={x.dtype}.")
  if implementation == "xla":
    return matmul_4bit_reference(x, w, fmt=fmt, transpose=transpose, bias=bias)
  if interpret is None:
    interpret = not common.on_gpu()
  m = x.shape[0]
  if config is None:
    kind = None if interpret else common.device_kind()
    config = config_lib.get_config(m, n, k, fmt.blocksize, x.dtype, transpose, kind)
  else:
    config = config_lib.fit(config, m, n, k, fmt.blocksize, transpose)
  return matmul_4bit_triton(x, w, fmt=fmt, config=config, transpose=transpose, bias=bias,
                            interpret=interpret)
