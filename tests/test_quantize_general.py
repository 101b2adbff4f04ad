"""``quantize_model`` with layers it does not convert: listed in the report with the reason."""

from __future__ import annotations

from flax import nnx

import jaxfp4.nnx


def test_quantize_model_reports_general_layers_it_keeps():
  class Net(nnx.Module):
    def __init__(self):
      self.dense = nnx.Linear(64, 64, rngs=nnx.Rngs(0))
      self.general = nnx.LinearGeneral((4, 16), 8, axis=(-2, -1), rngs=nnx.Rngs(1))
      self.einsum = nnx.Einsum("bd,dh->bh", (64, 8), rngs=nnx.Rngs(2))
  net = Net()
  report = jaxfp4.nnx.quantize_model(net)
  rows = {l.path: l for l in report.layers}
  assert rows["dense"].quantized and not rows["dense"].kept_because
  assert "nnx.LinearGeneral is kept" in rows["general"].kept_because and not rows["general"].quantized
  assert "nnx.Einsum is kept" in rows["einsum"].kept_because
  assert (rows["general"].in_features, rows["general"].out_features) == (64, 8)
  assert "kept einsum: nnx.Einsum" in str(report) and isinstance(net.general, nnx.LinearGeneral)
