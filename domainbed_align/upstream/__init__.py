"""The one boundary with DomainBed: only this package imports ``domainbed``.

Importing it is cheap (no torch): the ``.pth`` hook imports :mod:`domainbed_align.upstream.hook` at start-up."""
