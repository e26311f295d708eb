"""The ``domainbed-align`` command: one entry point, one subcommand per task (work in progress: issue 28)."""

from __future__ import annotations

# Every subcommand, in the order --help lists them (the docs site is tested to document each one).
SUBCOMMANDS = ("doctor", "prepare", "demo", "sweep", "evaluate", "tables", "figures", "masks", "bench", "gpu-check")
