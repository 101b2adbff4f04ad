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
from typing import Any, Callable

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


def lazy_attributes(package: str, lazy: dict[str, tuple[str, str | None]],
                    namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
  """A package's PEP 562 ``__getattr__`` and ``__dir__`` for names loaded on first use.

  ``lazy`` maps a public name to ``(module, attribute)`` (attribute None: the
  module itself); the value is imported with :func:`import_optional` (a missing
  extra is named) and cached in ``namespace``, the package's ``globals()``.

  Example:
    >>> ns = {}
    >>> get, _ = lazy_attributes("pkg", {"formats": ("jaxfp4._src.formats", None)}, ns)
    >>> get("formats").__name__, "formats" in ns
    ('jaxfp4._src.formats', True)
  """
  def __getattr__(name: str) -> Any:
    if name not in lazy:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module_name, attr = lazy[name]
    module = import_optional(module_name, feature=f"{package}.{name}")
    value = module if attr is None else getattr(module, attr)
    namespace[name] = value
    return value

  def __dir__() -> list[str]:
    return sorted(set(namespace) | set(lazy))

  return __getattr__, __dir__


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
