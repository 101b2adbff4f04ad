"""``quantize_blocks``: dispatch between the Triton kernel and the reference."""

from __future__ import annotations

import jax

from pallas_kernels._src import common
from pallas_kernels._src.quantize_4bit import config as config_lib
from pallas_kernels._src.quantize_4bit.reference import quantize_blocks_reference
from pallas_kernels._src.quantize_4bit.triton import quantize_blocks_triton


def quantize_blocks(
    blocks: jax.Array,
    *,
    codec,
    scalars=(),
    implementation: str | None = None,
    config: config_lib.QuantizeConfig | None = None,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Quantizes each row of ``blocks[nb, bs]`` as one block.

  Args:
    blocks: float32, bfloat16 or float16 ``[nb, bs]``.
    codec: the format's block codec (see ``jaxfp4._src.codec.BlockCodec``).
    scalars: float32 scalars of the codec's scale rule.
    implementation: None (the kernel on a GPU when it applies, else the
      reference), ``"xla"`` (the reference) or ``"pallas"`` (the kernel; in
      interpret mode off the GPU; error if it cannot run).
    config: kernel launch config (default: tuned or heuristic).
    interpret: run the kernel in the Pallas interpreter (default: off the GPU).

  Returns:
    ``(packed uint8 [nb, bs // 2], stored [nb])``.
  """
  implementation = common.choose_implementation(
      implementation, config_lib.can_use_kernel(blocks.shape, blocks.dtype),
      f"The Pallas quantize kernel cannot handle blocks of shape {blocks.shape} "
      f"and dtype {blocks.dtype}.")
  if implementation == "xla":
    return quantize_blocks_reference(blocks, codec=codec, scalars=scalars)
  if interpret is None:
    interpret = not common.on_gpu()
  if config is None:
    kind = None if interpret else common.device_kind()
    config = config_lib.get_config(blocks.shape[1], blocks.dtype, kind)
  return quantize_blocks_triton(blocks, codec=codec, scalars=scalars,
                                config=config, interpret=interpret)
