"""domainbed-align: ALIGN (AAAI 2026) and its same-backbone baselines as a plugin for unmodified DomainBed.

Importing this package is cheap (no torch): the ``.pth`` file installed next to it imports it in every
interpreter so that ``domainbed.algorithms`` / ``domainbed.hparams_registry`` / ``domainbed.datasets`` get
our entries the moment DomainBed imports them.
"""

__version__ = "0.1.0"

import sys as _sys

# torch or timm below its floor is named on first import, except when the .pth hook imports us at interpreter
# start-up (it sets this flag): every Python process of the environment would pay for the check.
if not getattr(_sys, "_domainbed_align_pth", False):
    from domainbed_align import settings as _settings
    from domainbed_align.floors import require_runtime as _require_runtime

    _require_runtime(lambda: _settings.value("traceback", fallback=True))


def __getattr__(name: str):  # ALGORITHM_NAMES reads the registry, which imports torch: only on first use
    if name == "ALGORITHM_NAMES":
        from domainbed_align.methods.registry import algorithm_names

        return algorithm_names()
    raise AttributeError(f"module 'domainbed_align' has no attribute {name!r}")


def register() -> None:
    """Register our algorithms, hparams and datasets into DomainBed now (for notebooks and scripts).

    Safe to call repeatedly and before or after ``domainbed`` was imported; needs ``domainbed`` importable.
    """
    from domainbed_align.upstream import hook as _hook
    from domainbed_align.upstream import patches as _patches

    _hook.install()
    _patches.patch_all_now()
