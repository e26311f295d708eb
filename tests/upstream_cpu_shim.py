"""pytest plugin (``-p upstream_cpu_shim``) that lets upstream DomainBed's own tests run on a CPU.

Upstream's test_models / test_networks call ``.cuda()`` unconditionally. Without a GPU this makes
``Tensor.cuda`` and ``Module.cuda`` return their receiver unchanged; with a GPU it does nothing.
Test-only: never imported by the package.
"""

import torch

if not torch.cuda.is_available():
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
