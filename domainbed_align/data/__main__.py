"""Command line: ``python -m domainbed_align.data prepare --data_dir DIR [--datasets NAME ...]``."""
from __future__ import annotations

import argparse
import sys

from .prepare import COMPONENTS, DATASET_COMPONENTS, MissingSourceError, components_for, prepare
from domainbed_align.errors import print_error

COMMAND = "domainbed-align prepare"  # how its errors are prefixed (errors.print_error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m domainbed_align.data",
        description="Offline data preparation for domainbed_align (nothing is downloaded).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write MNIST (idx), background textures and VLCSMini into DIR (or only what "
                                       "--datasets need); idempotent and atomic")
    p.add_argument("--data_dir", required=True, help="DomainBed's --data_dir")
    which = p.add_mutually_exclusive_group()
    reads = "; ".join(f"{name}: {' + '.join(comps)}" for name, comps in DATASET_COMPONENTS.items())
    which.add_argument("--datasets", nargs="+", choices=tuple(DATASET_COMPONENTS), metavar="NAME",
                       help=f"prepare only what these datasets read, and need only their source packages ({reads})")
    which.add_argument("--only", nargs="+", choices=COMPONENTS,
                       help="prepare only these components (default: all)")
    args = parser.parse_args(argv)
    components = components_for(args.datasets) if args.datasets else (args.only or list(COMPONENTS))
    try:
        prepare(args.data_dir, components)
    except MissingSourceError as e:
        # One clear line, no traceback: the user only has to install a package.
        print_error(f"{e}", COMMAND)
        return 2
    except (OSError, RuntimeError) as e:  # a bad --data_dir, a full disk, a source failing its checksum
        print_error(f"could not prepare {args.data_dir!r}: {type(e).__name__}: {e} (prepare is atomic: "
                    f"no partial dataset was left; fix the cause and rerun)", COMMAND)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
