"""``matmul_4bit_group``: several packed weights applied to one input, one launch.

A decoder layer applies q/k/v (and gate/up) to the same activations. At decode
batch sizes each product is a short GEMV whose launch and the gaps around it
cost a good part of its time; one GEMV launch over the group pays one launch. Where the group cannot share a launch
(routes or formats that differ, no GPU) every weight takes
:func:`jaxfp4.matmul_4bit`'s own route. Each result is the weight's own
product: bit for bit where the group's launch config splits K as the weight's
own launch does, else up to the order of the float32 sums.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxfp4._src import matmul as matmul_lib
from jaxfp4._src import product as product_lib
from jaxfp4._src import quantize as quantize_lib
from jaxfp4._src.state import QuantState
import pallas_kernels


def _shared_launch(x, datas, states, implementation):
  """The group's kernel weights, format and kernel kind if one launch serves them all."""
  m = x.shape[0]
  if len(states) < 2:
    return None
  routes = {product_lib.route(m, st, x.dtype, implementation, False) for st in states}
  # Both register-table kernels have a group form. Measured on an H100
  # (docs/benchmarks.md, "Decode step"): the GEMV group cut a Llama-8B batch-1
  # step by 8%, the tensor-core group 2-4% at batch 16 against per-weight
  # launches with their per-shape configs. Dequantize + GEMM has no group form.
  if len(routes) != 1 or not routes <= {"gemv", "mma"}:
    return None
  pairs = [product_lib.kernel_weight(d, st) for d, st in zip(datas, states)]
  if len({fmt for _, fmt in pairs}) != 1:
    return None
  return [w for w, _ in pairs], pairs[0][1], routes.pop()


def _group_product(x, biases, datas, states, implementation):
  shared = _shared_launch(x, datas, states, implementation)
  if shared is None:
    return tuple(product_lib.product(x, d, st, b, implementation, transpose=False)
                 for d, st, b in zip(datas, states, biases))
  ws, fmt, kind = shared
  return pallas_kernels.matmul_lut_group(x, ws, fmt=fmt, biases=biases, kind=kind,
                                         implementation="pallas")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _matmul_group(x, biases, datas, states, implementation):
  return _group_product(x, biases, datas, states, implementation)


def _matmul_group_fwd(x, biases, datas, states, implementation):
  return _group_product(x, biases, datas, states, implementation), (biases, datas, states)


def _matmul_group_bwd(implementation, residuals, dys):
  biases, datas, states = residuals
  dx: jax.Array | None = None
  for dy, d, st in zip(dys, datas, states):
    part = product_lib.product(dy, d, st, None, implementation, transpose=True)
    dx = part.astype(jnp.float32) if dx is None else dx + part.astype(jnp.float32)
  dbiases = tuple(None if b is None else
                  jnp.sum(dy.astype(jnp.float32), axis=0).astype(b.dtype)
                  for b, dy in zip(biases, dys))
  zero = product_lib.zero_cotangent
  assert dx is not None  # a group has at least one weight
  return (dx.astype(dys[0].dtype), dbiases, tuple(zero(d) for d in datas),
          tuple(jax.tree_util.tree_map(zero, st) for st in states))


_matmul_group.defvjp(_matmul_group_fwd, _matmul_group_bwd)


def matmul_4bit_group(
    x: jax.typing.ArrayLike,
    weights: Sequence[tuple[jax.typing.ArrayLike, QuantState]],
    *,
    biases: Sequence[jax.typing.ArrayLike | None] | None = None,
    implementation: str | None = None,
) -> tuple[jax.Array, ...]:
  """``x @ W_i.T + bias_i`` for every ``(packed_i, state_i)``, as one launch where it pays.

  Equal to ``[matmul_4bit(x, p, s, bias=b, implementation=implementation) for
  ...]`` up to the order of float32 sums (the launch config follows the
  group's summed N), with the same gradients: ``dx`` sums the weights' input
  gradients in float32. On a GPU, when every product takes the decode GEMV
  (a few rows of x) and the weights share a format and K, one kernel launch
  computes them all: q/k/v or gate/up of a decoder layer without
  concatenating their bytes.

  Args:
    x: ``[..., K]`` activations, float32, bfloat16 or float16.
    weights: ``(packed, state)`` pairs of 2-D weights ``[N_i, K]``.
    biases: optional, one ``[N_i]`` or None per weight.
    implementation: as :func:`jaxfp4.matmul_4bit`.

  Returns:
    A tuple of ``[..., N_i]`` arrays in ``x.dtype``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxfp4
    >>> ws = [jaxfp4.quantize_4bit(jax.random.normal(jax.random.key(i), (n, 64)),
    ...                            quant_type="nf4") for i, n in enumerate((32, 16))]
    >>> q, k = jaxfp4.matmul_4bit_group(jnp.ones((1, 64)), ws)
    >>> q.shape, k.shape
    ((1, 32), (1, 16))
  """
  if implementation not in matmul_lib.IMPLEMENTATIONS:
    raise ValueError(f"`implementation` must be one of {matmul_lib.IMPLEMENTATIONS}, "
                     f"got {implementation!r}.")
  weights = tuple(weights)
  if not weights or any(not isinstance(w, (tuple, list)) or len(w) != 2 for w in weights):
    raise ValueError("`weights` must be a non-empty sequence of (packed, state) pairs.")
  biases = (None,) * len(weights) if biases is None else tuple(biases)
  if len(biases) != len(weights):
    raise ValueError(f"`biases` must have one entry per weight ({len(weights)}), "
                     f"got {len(biases)}.")
  x = jnp.asarray(x)
  if jnp.dtype(x.dtype).name not in matmul_lib.ACTIVATION_DTYPES:
    raise ValueError(f"`x` must have a dtype in {matmul_lib.ACTIVATION_DTYPES}, got {x.dtype}.")
  datas, states, checked = [], [], []
  for i, ((packed, state), bias) in enumerate(zip(weights, biases)):
    data = quantize_lib.check_packed(packed, state)
    _, _, bias = matmul_lib.check_product_shapes(x, state, bias, weight=f"weights[{i}]",
                                                 bias_name=f"biases[{i}]")
    datas.append(data)
    states.append(state)
    checked.append(bias)
  k = x.shape[-1]
  lead = x.shape[:-1]
  ys = _matmul_group(x.reshape(-1, k), tuple(checked), tuple(datas), tuple(states),
                     implementation)
  return tuple(y.reshape(*lead, st.shape[0]) for y, st in zip(ys, states))
