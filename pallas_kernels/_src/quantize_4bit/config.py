"""Launch configuration of the quantize kernel: dataclass, heuristic, candidates."""

from __future__ import annotations

import dataclasses
import jax.numpy as jnp

from pallas_kernels._src import tuning



@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizeConfig:
  """Launch parameters of the Triton quantize kernel.

  Attributes:
    block_rows: quantization blocks per program (power of two).
    num_warps: warps per program.
    num_stages: software-pipelining depth.
  """

  block_rows: int = 64
  num_warps: int = 4
  num_stages: int = 1

  def __post_init__(self):
    tuning.check_powers_of_two(self, ("block_rows", "num_warps"))


SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")


def can_use_kernel(shape: tuple[int, ...], dtype) -> bool:
  """Whether the kernel handles ``blocks`` of this shape and dtype."""
  if len(shape) != 2:
    return False
  nb, bs = shape
  return (nb > 0 and bs >= 16 and bs & (bs - 1) == 0
          and jnp.dtype(dtype).name in SUPPORTED_DTYPES)



def get_config(blocksize: int, dtype, device_kind: str | None = None) -> QuantizeConfig:
  """Measured config for this device kind if recorded, else a heuristic.

  The heuristic gives each program about 8K elements: enough bytes in flight
  per SM for a memory-bound kernel, small enough for many programs.
  """
  entry = tuning.tuned_entry("quantize_4bit", device_kind, f"{jnp.dtype(dtype).name}/{blocksize}")
  if entry:
    return QuantizeConfig(**entry)
  return QuantizeConfig(block_rows=max(1, 8192 // blocksize), num_warps=4)


def candidate_configs(blocksize: int) -> list[QuantizeConfig]:
  """The bounded search space swept by the benchmark."""
  out = []
  for elems in (2048, 4096, 8192, 16384):
    for warps in (4, 8):
      out.append(QuantizeConfig(block_rows=max(1, elems // blocksize), num_warps=warps))
  return out
