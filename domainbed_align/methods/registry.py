"""The one registry of our algorithms (timm's decorator style): the hook, checkpoints, hparams and docs read it.

A method is registered where it is defined::

    @register_algorithm(hparams=BACKBONE_HPARAMS + (HParam("lambda_x", float, 1.0, ...),),
                        paper="...", reference="owner/repo, path", explanation="Grad-CAM")
    class X(ExplanationGuidedAlgorithm): ...

Registration order is the order everywhere (DomainBed's ``ALGORITHMS`` list, hence sweep's default list and
collect_results' rows; the README's tables). This module imports nothing of ours above it (no torch either): as in
timm, the package imports its modules and the registry never imports up. Importing this module imports its package,
:mod:`domainbed_align.methods`, first, which registers every method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from domainbed_align.floors import require_runtime

require_runtime()  # every use of our algorithms passes here: torch or timm below its floor is named first

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class AlgorithmEntry:
    """What the package knows of one registered algorithm."""

    name: str
    cls: type
    hparams: tuple[Any, ...]  # methods.hparams.HParam specs: every hparam of ours it reads (DomainBed's common ones excluded)
    paper: str  # citation of the method ("" for our own reference, TimmERM)
    reference: str  # public code it follows: "owner/repo: path(s)"
    explanation: str  # what it trains on, and what `evaluate` scores for it
    annotations: bool  # trains on ground-truth masks (the mask channel reaches its loss, never its networks)


_ENTRIES: dict[str, AlgorithmEntry] = {}


def register_algorithm(*, hparams: tuple[Any, ...], paper: str = "", reference: str = "",
                       explanation: str = "Grad-CAM is what evaluate scores.") -> Callable[[T], T]:
    """Class decorator: add an :class:`~domainbed_align.methods.trainer.ExplanationGuidedAlgorithm` subclass under its
    class name. Re-registering a name replaces the entry (module reloads)."""
    names = [spec.name for spec in hparams]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"hparams {duplicates} are declared twice")

    def decorate(cls: T) -> T:
        name = cls.__name__
        cls.name = name
        _ENTRIES[name] = AlgorithmEntry(name=name, cls=cls, hparams=tuple(hparams), paper=paper,
                                        reference=reference, explanation=explanation,
                                        annotations=bool(getattr(cls, "uses_gt_masks", False)))
        return cls

    return decorate


def algorithm_names() -> tuple[str, ...]:
    """Every registered algorithm, in registration order."""
    return tuple(_ENTRIES)


def entry(name: str) -> AlgorithmEntry:
    entries = _ENTRIES
    if name not in entries:
        raise KeyError(f"{name!r} is not one of our algorithms; registered: {list(entries)}")
    return entries[name]


def entries() -> tuple[AlgorithmEntry, ...]:
    return tuple(_ENTRIES.values())


def algorithm_class(name: str) -> Any:
    return entry(name).cls
