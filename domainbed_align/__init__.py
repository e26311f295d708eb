"""domainbed-align: ALIGN (AAAI 2026) and its same-backbone baselines as a plugin for unmodified DomainBed.

Importing this package is cheap (no torch): the ``.pth`` file installed next to it imports it in every
interpreter so that ``domainbed.algorithms`` / ``domainbed.hparams_registry`` / ``domainbed.datasets`` get
our entries the moment DomainBed imports them.
"""

__version__ = "0.1.0"



def __getattr__(name: str):  # ALGORITHM_NAMES reads the registry, which imports torch: only on first use
    if name == "ALGORITHM_NAMES":
        from domainbed_align.registry import algorithm_names

        return algorithm_names()
    raise AttributeError(f"module 'domainbed_align' has no attribute {name!r}")


def register() -> None:
    """Register our algorithms, hparams and datasets into DomainBed now (for notebooks and scripts).

    Safe to call repeatedly and before or after ``domainbed`` was imported; needs ``domainbed`` importable.
    """
    from domainbed_align import _hook

    _hook.install()
    _hook.patch_all_now()
