"""Walking an NNX model's variables once each, with the module path that owns them."""

from __future__ import annotations

from typing import Iterator

from flax import nnx


def unique_variables(model: nnx.Module) -> Iterator[tuple[str, str, nnx.Variable]]:
  """Yields ``(module_path, leaf, variable)`` for every variable of ``model``, once.

  ``module_path`` is dotted (``"model.layers.0.mlp.up_proj"``, ``""`` at the top) and
  ``leaf`` the attribute name (``"kernel"``). A variable reachable by several paths
  (tied weights) comes once, at its first path in ``nnx.iter_graph`` order; random
  number state (``nnx.RngState``) is skipped.
  """
  seen = set()
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Variable) or isinstance(node, nnx.RngState) or id(node) in seen:
      continue
    seen.add(id(node))
    yield ".".join(str(p) for p in path[:-1]), str(path[-1]), node
