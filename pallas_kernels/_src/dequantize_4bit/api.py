"""``dequantize_blocks``: dispatch between the Triton kernel and the reference."""

from __future__ import annotations

import jax

from pallas_kernels._src import common
from pallas_kernels._src.dequantize_4bit import config as config_lib
from pallas_kernels._src.dequantize_4bit.reference import dequantize_blocks_reference
from pallas_kernels._src.dequantize_4bit.triton import dequantize_blocks_triton


def dequantize_blocks(
    data: jax.Array,
    scales: jax.Array,
    *,
    lut,
    numel: int,
    blocksize: int,
    out_dtype,
    implementation: str | None = None,
    config: config_lib.DequantizeConfig | None = None,
    interpret: bool | None = None,
) -> jax.Array:
  """Decodes packed nibbles: ``out_dtype(lut[nibble] * scales[block])``.

  Args:
    data: uint8 ``[(numel + 1) // 2]`` packed bytes, first element high.
    scales: float32 ``[ceil(numel / blocksize)]``.
    lut: the 16 decode values.
    numel: number of elements.
    blocksize: elements per block.
    out_dtype: float32, bfloat16 or float16.
    implementation: None (the kernel on a GPU when it applies, else the
      reference), ``"xla"`` or ``"pallas"`` (interpret mode off the GPU; error
      if it cannot run).
    config: kernel launch config (default: tuned or heuristic).
    interpret: run the kernel in the Pallas interpreter (default: off the GPU).

  Returns:
    ``[numel]`` array of ``out_dtype``.
  """
  implementation = common.choose_implementation(
      implementation, config_lib.can_use_kernel(numel, blocksize, out_dtype),
      f"The Pallas dequantize kernel needs whole blocks and a float output: "
      f"got numel={numel}, blocksize={blocksize}, out_dtype={out_dtype}.")
  if implementation == "xla":
    return dequantize_blocks_reference(data, scales, lut=lut, numel=numel,
                                       blocksize=blocksize, out_dtype=out_dtype)
  if interpret is None:
    interpret = not common.on_gpu()
  if config is None:
    kind = None if interpret else common.device_kind()
    config = config_lib.get_config(blocksize, out_dtype, kind)
  return dequantize_blocks_triton(data, scales, lut=lut, blocksize=blocksize,
                                  out_dtype=out_dtype, config=config, interpret=interpret)
