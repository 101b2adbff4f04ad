"""Loads ``examples/<name>.py`` as a module for the example tests (the directory is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
  """Imports ``examples/<name>.py`` under the module name ``jaxfp4_example_<name>``."""
  # The training scripts import their shared module (examples/_stdlib_corpus.py) as a sibling, as
  # they do when run as `python examples/<name>.py`.
  if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
  spec = importlib.util.spec_from_file_location(f"jaxfp4_example_{name}", EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
  spec.loader.exec_module(module)
  return module
