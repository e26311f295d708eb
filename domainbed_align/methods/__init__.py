"""The methods: the registry, the shared trainer and its step, each method, and their numerical core.

Importing this package registers every method, in this order (DomainBed's ALGORITHMS list, sweeps, tables)."""

from domainbed_align.methods import erm, dre, align, baselines  # noqa: F401  (registration order)
