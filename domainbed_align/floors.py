"""The oldest release of each dependency that this package is tested with: one place for setup.py, the import
check and ``doctor``.

CI's second environment (``tests/floor_env.sh``) installs exactly these releases on Python 3.10, reading them back
from the installed package's metadata, and runs the numerical tests there: a floor here is a tested claim. Older
releases are refused at first use (torch, timm) or reported by ``doctor`` (the others), because nothing checks them.

- torch 2.4.1 / torchvision 0.19.1 (the issue's target: clusters a year or more behind): the code avoids what came
  later (``aminmax``'s derivative, 2.12; ``nn.utils.get_total_norm``, 2.6; ``serialization.safe_globals``, 2.5) and
  uses ``serialization.add_safe_globals`` (2.4) to load DomainBed checkpoints with ``weights_only``.
- timm 1.0.3: the first 1.0 release, already this package's floor.
- numpy 1.24.4, pandas 2.0.3, matplotlib 3.7.5, pillow 9.5.0 and the rest: the releases of mid-2023 that a torch-2.4 environment
  typically has, all with Python 3.10 wheels.

This module imports nothing heavy: the ``.pth`` hook and ``setup.py`` read it.
"""

from __future__ import annotations

import sys
from typing import Callable

# distribution name (as pip knows it) -> the oldest release tested
FLOORS: dict[str, str] = {
    "torch": "2.4.1",
    "torchvision": "0.19.1",
    "timm": "1.0.3",
    "numpy": "1.24.4",
    "pandas": "2.0.3",
    "matplotlib": "3.7.5",
    "huggingface_hub": "0.23.0",
    "submitit": "1.5.1",
    "tqdm": "4.66.1",
    "tabulate": "0.9.0",
    "jinja2": "3.1.2",
    "pillow": "9.5.0",
}

# The optional parts: extra -> the floored dependencies it installs (the rest of FLOORS is always installed).
# submitit: the slurm and submitit_local launchers; matplotlib: every figure; jinja2: LaTeX tables (pandas' Styler).
EXTRAS: dict[str, tuple[str, ...]] = {"slurm": ("submitit",), "report": ("matplotlib", "jinja2")}
# what each extra's import is called, where it differs from the distribution's name
IMPORT_NAMES = {"pillow": "PIL"}
# extras without a tested floor (test oracles and benchmark references): named, never pinned
UNFLOORED_EXTRAS: dict[str, tuple[str, ...]] = {"bench": ("grad-cam",)}
_IMPORTS_OF_UNFLOORED = {"grad-cam": "pytorch_grad_cam"}

# checked when the package is first used (the others are checked by ``doctor``): a torch or timm below its floor
# fails in ways that do not name the cause (a missing derivative at step 1, an AttributeError in a checkpoint)
CHECKED_AT_IMPORT = ("torch", "timm")

_checked = False


def requirements() -> list[str]:
    """``install_requires`` entries: ``name>=floor`` for every dependency no extra owns."""
    optional = {name for names in EXTRAS.values() for name in names}
    return [f"{name}>={floor}" for name, floor in FLOORS.items() if name not in optional]


def extra_requirements() -> dict[str, list[str]]:
    """``extras_require`` entries of the optional parts, each dependency at its floor."""
    floored = {extra: [f"{name}>={FLOORS[name]}" for name in names] for extra, names in EXTRAS.items()}
    return {**floored, **{extra: list(names) for extra, names in UNFLOORED_EXTRAS.items()}}


def require_extra(extra: str, needed_by: str) -> None:
    """Raise one :class:`~domainbed_align.errors.MissingExtraError` naming the extra to install when a dependency of
    ``extra`` is not importable (``needed_by``: the command or feature that needs it)."""
    import importlib.util

    names = EXTRAS.get(extra) or UNFLOORED_EXTRAS[extra]
    modules = {name: IMPORT_NAMES.get(name) or _IMPORTS_OF_UNFLOORED.get(name) or name for name in names}
    missing = [name for name, module in modules.items() if importlib.util.find_spec(module) is None]
    if missing:
        from domainbed_align.errors import MissingExtraError

        raise MissingExtraError(f"{needed_by} needs {' and '.join(missing)}, which is not installed: "
                                f"pip install 'domainbed-align[{extra}]'")


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"2.4.1+cu121"`` -> (2, 4, 1), ``"2.12.0.dev2025"`` -> (2, 12, 0).
    Hand-written because ``packaging`` is not a dependency of ours; pre-releases count as their release."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):  # "0rc1", "1a0": the release ends here
            break
    return tuple(parts)


def installed_version(name: str) -> str | None:
    """The version the interpreter will import: the module's own ``__version__`` when it is imported already, else
    the installed distribution's metadata (cheaper than importing torch); None when it is not installed."""
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None)
    if version is not None:
        return str(version)
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def below_floor(name: str) -> str | None:
    """One line naming ``name``'s problem with its floor (missing, or older), or None when it satisfies it."""
    floor = FLOORS[name]
    found = installed_version(name)
    if found is None:
        return f"domainbed-align needs {name} >= {floor}, but {name} is not installed: pip install '{name}>={floor}'"
    if release(found) < release(floor):
        return (f"domainbed-align needs {name} >= {floor}, found {found}: pip install --upgrade '{name}>={floor}' "
                f"(or install a domainbed-align release that supports {name} {found})")
    return None


def _no_traceback() -> bool:
    return False


def require_runtime(show_traceback: Callable[[], bool] | None = None) -> None:
    """Stop with one line when torch or timm is below its floor (once per interpreter).

    Raises :class:`~domainbed_align.errors.DependencyVersionError` (an ImportError) after installing the excepthook
    (:func:`~domainbed_align.errors.install_excepthook`), so that, uncaught, only its message is printed.
    ``show_traceback``: the ``DOMAINBED_ALIGN_TRACEBACK`` switch for that hook, from a caller that may read the
    settings (this layer may not); without it the message comes alone."""
    global _checked
    if _checked:
        return
    problems = [line for line in map(below_floor, CHECKED_AT_IMPORT) if line]
    if not problems:
        _checked = True
        return
    from domainbed_align.errors import DependencyVersionError, install_excepthook

    install_excepthook(show_traceback or _no_traceback)
    raise DependencyVersionError("; ".join(problems))
