"""``examples/calibrate_minilm.py`` end to end on the tiny random BERT of tests/data/minilm."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

from tests._examples import load_example
from tests.test_example_minilm import CALIBRATION, SENTENCES, model_dir  # noqa: F401  (model_dir: a fixture)



@pytest.fixture(scope="module")
def example() -> ModuleType:
  return load_example("calibrate_minilm")


def test_help(example, capsys):
  with pytest.raises(SystemExit) as e:
    example.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage:") and "--bits" in out and "--formats" in out


def test_tiny_run(example, model_dir, tmp_path):  # noqa: F811
  (tmp_path / "s.txt").write_text(SENTENCES)
  (tmp_path / "c.txt").write_text(CALIBRATION)
  out = tmp_path / "out"
  res = example.main(["--model-dir", str(model_dir), "--sentences", str(tmp_path / "s.txt"),
                      "--calibration", str(tmp_path / "c.txt"), "--out-dir", str(out), "--no-progress",
                      "--formats", "nf4,bf16", "--blocksizes", "64", "--bits", "4.3"])
  rows = {r["label"]: r for r in res["variants"]}
  assert list(rows)[:4] == ["NF4", "NF4+clip", "NF4+DQ", "NF4+DQ+clip"]
  assert rows["NF4"]["bits_per_weight"] == 4.5 and rows["NF4+clip"]["bits_per_weight"] == 4.5
  assert rows["NF4+DQ"]["bits_per_weight"] < 4.2
  # On the calibration data the clipped scales are never worse, and a plan at a baseline's size
  # (which may choose that baseline) is never worse than it.
  assert rows["NF4+clip"]["sensitivity"] <= rows["NF4"]["sensitivity"]
  assert rows["NF4+DQ+clip"]["sensitivity"] <= rows["NF4+DQ"]["sensitivity"]
  plans = [r for label, r in rows.items() if label.startswith("plan @ ")]
  assert len(plans) == 3  # at NF4's size, at NF4+DQ's and at 4.3
  assert sorted(p["budget"] for p in plans)[1:] == [4.3, 4.5]
  for p in plans:
    assert p["bits_per_weight"] <= p["budget"]
    for base in ("NF4", "NF4+clip", "NF4+DQ", "NF4+DQ+clip"):
      if rows[base]["bits_per_weight"] <= p["budget"]:
        assert p["sensitivity"] <= rows[base]["sensitivity"] * (1 + 1e-9), (p["label"], base)
  for r in rows.values():
    assert 0.5 < r["cos_mean"] <= 1.0 + 1e-6
  saved = json.loads((out / "results.json").read_text())
  assert len(saved["variants"]) == len(rows) and saved["calibration_tokens"] > 0
  assert (out / "plan.png").read_bytes()[:4] == b"\x89PNG"


def test_llama_example_help(capsys):
  module = load_example("calibrate_llama")
  with pytest.raises(SystemExit) as e:
    module.main(["--help"])
  assert e.value.code == 0 and "pretrained" in capsys.readouterr().out
