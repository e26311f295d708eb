"""A stand-in for upstream DomainBed's registries, written for this project's CI contract tests.

It reproduces only the contract our hook relies on (documented in shared/domainbed-contract.md): registries
looked up in module globals, an ``ALGORITHMS`` / ``DATASETS`` list, ``_hparams`` returning
{name: (default, random)} seeded per name. It never replaces the real-upstream integration run.
"""
