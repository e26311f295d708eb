"""The registration hook that ``domainbed_align_hook.pth`` installs in every interpreter of the environment.

Every Python process pays for what this module imports, DomainBed's or not, so it imports nothing beyond ``sys``
(already loaded at start-up): :func:`install` puts a finder first on ``sys.meta_path``; when DomainBed imports one
of :data:`TARGETS`, the finder wraps that module's loader, and right after the module's body runs
:func:`domainbed_align.upstream.patches.patch_module` (the patches, imported only then) adds our entries.

It only finds and loads: what the rest of the package asks of DomainBed is :mod:`domainbed_align.upstream.adapter`'s.
"""

import sys

TARGETS = ("domainbed.algorithms", "domainbed.hparams_registry", "domainbed.datasets", "domainbed.lib.reporting",
           "domainbed.lib.misc", "domainbed.command_launchers", "domainbed.lib.fast_data_loader")


class _PatchingLoader:
    """Delegates to DomainBed's own loader, then patches the fresh module. (No importlib.abc base class: importing
    importlib.abc costs every interpreter ~20 ms; the import system needs only these methods.)"""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        from domainbed_align.upstream.patches import patch_module

        patch_module(module)

    def __getattr__(self, name):  # get_source, get_filename, ... (tracebacks need them)
        return getattr(self._loader, name)


class _DomainBedFinder:
    def find_spec(self, fullname, path, target=None):
        if fullname not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, _PatchingLoader):
                    spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once) and patch DomainBed modules already imported."""
    if not is_installed():
        sys.meta_path.insert(0, _DomainBedFinder())
    imported = [sys.modules[name] for name in TARGETS if name in sys.modules]
    if imported:
        from domainbed_align.upstream.patches import patch_module

        for module in imported:
            patch_module(module)


def is_installed() -> bool:
    return any(isinstance(finder, _DomainBedFinder) for finder in sys.meta_path)

