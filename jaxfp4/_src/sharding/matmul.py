"""``matmul_4bit`` on a sharded weight: the kernels run per shard inside ``shard_map``.

Each device decodes only its own shard of the packed weight (the fused Pallas
kernel or the dequantize kernel, as on one device). Column-parallel shards
write disjoint output columns. Row-parallel shards each produce a partial
product; they come out of ``shard_map`` stacked along a leading axis split over
``in_axis`` and are summed outside it, so the SPMD partitioner picks the
collective (all-reduce, or reduce-scatter when the consumer is split). The
backward product ``dy @ W`` is the same construction with the roles of the two
axes swapped. FSDP axes (weight axes that also split the batch) all-gather
the 4-bit bytes inside the shard body, just before use.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import cast

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxfp4._src import product as product_lib
from jaxfp4._src.sharding import layout
from jaxfp4._src.state import QuantState


def _gather_fsdp(data, state: QuantState, ws: layout.WeightSharding):
  """All-gathers the weight's FSDP axes (the 4-bit bytes and their scales)."""
  def gather(a, axes, dim):
    return jax.lax.all_gather(a, layout.spec_entry(axes), axis=dim, tiled=True) if axes else a
  out = ws.out_axis if not ws.compute_out_axis else ()
  inn = ws.in_axis if not ws.compute_in_axis else ()
  if not (out or inn):
    return data, state
  data = gather(gather(data, out, 0), inn, 1)
  absmax = gather(gather(state.absmax, out, 0), inn, 1)
  state2 = state.state2
  if state2 is not None and out:
    state2 = dataclasses.replace(state2, absmax=gather(state2.absmax, out, 0))
  return data, dataclasses.replace(state, absmax=absmax, state2=state2)


def sharded_product(x, data, state: QuantState, bias, implementation, ws: layout.WeightSharding,
                    transpose: bool):
  """``x @ W.T + bias`` (or ``x @ W``) with ``W`` split as ``ws`` says; ``x`` is 2-D."""
  out_ax, in_ax = ws.compute_out_axis, ws.compute_in_axis
  # The forward product reduces over W's input dim, the transposed one over its output dim.
  reduce_ax, keep_ax = (out_ax, in_ax) if transpose else (in_ax, out_ax)
  batch = layout.spec_entry(ws.batch_axis)
  data_spec, state_specs = layout.weight_specs(state, ws)
  x_spec = P(batch, layout.spec_entry(reduce_ax))
  out_spec = (P(layout.spec_entry(reduce_ax), batch, layout.spec_entry(keep_ax)) if reduce_ax
              else P(batch, layout.spec_entry(keep_ax)))
  local_bias = bias if (bias is not None and not reduce_ax) else None

  def body(x_l, data_l, state_l, *bias_l):
    data_l, state_l = _gather_fsdp(data_l, state_l, ws)
    shape = (data_l.shape[0], data_l.shape[1] * 2)
    local = layout.local_state(state_l, shape)
    y = product_lib.product(x_l, data_l.reshape(-1), local, bias_l[0] if bias_l else None,
                            implementation, transpose=transpose)
    return y[None] if reduce_ax else y

  args, specs = [x, data, state], [x_spec, data_spec, state_specs]
  if local_bias is not None:
    args.append(local_bias)
    specs.append(P(layout.spec_entry(keep_ax)))
  if any(t == AxisType.Explicit for t in ws.mesh.axis_types):
    # Explicit axes: shard_map takes inputs only as their types say, so move them first.
    args = [jax.tree.map(lambda a, s: jax.sharding.reshard(a, NamedSharding(ws.mesh, s)), a, s)
            for a, s in zip(args, specs)]
  y = jax.shard_map(body, mesh=ws.mesh, in_specs=tuple(specs), out_specs=out_spec,
                    check_vma=False)(*args)
  if not reduce_ax:
    return y
  acc = jnp.sum(y.astype(jnp.float32), axis=0)
  if bias is not None:
    acc = acc + bias.astype(jnp.float32)[None, :]
  return acc.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def sharded_matmul(x, bias, data, state, implementation, ws):
  return sharded_product(x, data, state, bias, implementation, ws, transpose=False)


def _fwd(x, bias, data, state, implementation, ws):
  return sharded_matmul(x, bias, data, state, implementation, ws), (bias, data, state)


def _bwd(implementation, ws, residuals, dy):
  bias, data, state = residuals
  dx = sharded_product(dy, data, state, None, implementation, ws, transpose=True)
  dbias = None if bias is None else jnp.sum(dy.astype(jnp.float32), axis=0).astype(bias.dtype)
  zero = product_lib.zero_cotangent
  return dx, dbias, zero(data), jax.tree_util.tree_map(zero, state)


sharded_matmul.defvjp(_fwd, _bwd)


def matmul_sharded(x2, packed, state: QuantState, bias, implementation, ws: layout.WeightSharding):
  """Validates the layout and runs :func:`sharded_matmul` on 2-D ``x2``."""
  layout.check_shardable(state, ws)
  data = packed
  if state.nested and not layout.keeps_nesting(state, ws):
    raise ValueError(
        "This nested (double-quantized) state would have its 256-entry absmax groups split by "
        f"the sharding (out_axis={ws.out_axis}, in_axis={ws.in_axis}); place the weight with "
        "jaxfp4.sharding.shard_4bit, which stores those layers' absmax in float32.")
  data_spec, state_specs = layout.weight_specs(state, ws)
  layout.check_placement("packed", packed, data_spec, ws)
  layout.check_placement("state.absmax", state.absmax, cast(P, state_specs.absmax), ws)
  m = x2.shape[0]
  p_batch = ws.size(ws.batch_axis)
  if m % p_batch:
    raise ValueError(f"`batch_axis` {ws.batch_axis} splits the {m} input rows (all leading dims of "
                     f"`x` flattened) into {p_batch} shards; the rows must be a multiple of {p_batch}.")
  return sharded_matmul(x2, bias, data, state, implementation, ws)
