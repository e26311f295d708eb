"""Data for domainbed_align: offline preparation and DomainBed-style datasets.

``python -m domainbed_align.data prepare --data_dir DIR`` writes everything (see ``prepare``).
``DATASETS`` maps DomainBed dataset names to classes; it and the classes are resolved lazily, so the
prepare command does not import torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["DATASETS", "TextureMNIST", "SpuriousTextureMNIST", "VLCSMini", "DecoyMNIST", "DecoyMNISTFull"]

_NAMES = ("TextureMNIST", "SpuriousTextureMNIST", "VLCSMini", "DecoyMNIST", "DecoyMNISTFull")


def __getattr__(name: str) -> Any:
    if name == "DATASETS" or name in _NAMES:
        from . import datasets, decoy_mnist

        table = {n: getattr(datasets, n, None) or getattr(decoy_mnist, n) for n in _NAMES}
        globals().update(table, DATASETS=table)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
