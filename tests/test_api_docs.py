"""docs/api.md lists every public name; it is regenerated here and must match."""

import pathlib

from tools import gen_api_docs

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_api_reference_is_up_to_date():
  text = gen_api_docs.render()
  on_disk = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
  assert on_disk == text, "docs/api.md is out of date: run python tools/gen_api_docs.py"


def test_every_public_module_is_listed():
  files = [*ROOT.glob("jaxfp4/*.py"), *ROOT.glob("jaxfp4/models/*.py")]
  modules = {".".join(f.relative_to(ROOT).with_suffix("").parts) for f in files}
  modules = {m.removesuffix(".__init__") for m in modules if not m.rsplit(".", 1)[-1].startswith("_")
             or m.endswith("__init__")}
  modules -= {"jaxfp4.models", "jaxfp4.__main__"}  # a namespace of the three model modules; python -m
  assert modules <= set(gen_api_docs.MODULES), sorted(modules - set(gen_api_docs.MODULES))


def test_every_public_callable_has_a_summary():
  missing = [line for line in gen_api_docs.render().splitlines() if "(no docstring)" in line
             or "(no module docstring)" in line]
  assert not missing, missing
