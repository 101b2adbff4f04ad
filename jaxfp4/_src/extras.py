"""Optional dependencies: which extra installs what, and a clear error when one is missing.

``pip install jaxfp4`` installs the core (JAX, numpy, ml_dtypes). The layers
above it need more (docs/architecture.md): ``[flax]`` (Flax, optax, tqdm) for
the NNX/Linen layers, models, calibration and model IO; ``[plot]``
(matplotlib) for figures; ``[hub]`` (huggingface_hub) for Hub repo ids.
"""

from __future__ import annotations

import importlib
import importlib.util
import types

# Top-level import name -> the extra that installs it.
EXTRA_OF = {
    "flax": "flax",
    "optax": "flax",
    "tqdm": "flax",
    "matplotlib": "plot",
    "huggingface_hub": "hub",
}


class MissingExtraError(ImportError):
  """An optional package is not installed; the message names the extra to install."""


def missing_extra(package: str, *, feature: str) -> MissingExtraError:
  """The error for ``feature`` needing ``package`` (an :data:`EXTRA_OF` key)."""
  extra = EXTRA_OF[package]
  return MissingExtraError(
      f"{feature} needs {package}, which is not installed: pip install \"jaxfp4[{extra}]\" "
      f"(or \"jaxfp4[all]\").", name=package)


def import_optional(module: str, *, feature: str | None = None) -> types.ModuleType:
  """Imports ``module``; if an optional package it needs is missing, raises
  :class:`MissingExtraError` naming the extra (any other ImportError propagates).

  Example:
    >>> from jaxfp4._src.extras import import_optional
    >>> import_optional("jaxfp4._src.formats").__name__
    'jaxfp4._src.formats'
  """
  try:
    return importlib.import_module(module)
  except MissingExtraError:
    raise
  except ImportError as e:
    top = (e.name or "").split(".")[0]
    if top not in EXTRA_OF:
      raise
    raise missing_extra(top, feature=feature or module) from e


def available(package: str) -> bool:
  """Whether the optional ``package`` can be imported (without importing it)."""
  return importlib.util.find_spec(package) is not None


def require(package: str, *, feature: str) -> None:
  """Raises :class:`MissingExtraError` naming the extra if ``package`` is missing.

  Example:
    >>> from jaxfp4._src.extras import require
    >>> require("numpy", feature="this example") is None   # installed: nothing happens
    True
  """
  if not available(package):
    raise missing_extra(package, feature=feature)
