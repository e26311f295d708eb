"""Command line: ``python -m domainbed_align.data prepare --data_dir DIR``."""
from __future__ import annotations

import argparse
import sys

from .prepare import COMPONENTS, MissingSourceError, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m domainbed_align.data",
        description="Offline data preparation for domainbed_align (nothing is downloaded).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write MNIST (idx), background textures and VLCSMini into DIR; "
                                       "idempotent and atomic")
    p.add_argument("--data_dir", required=True, help="DomainBed's --data_dir")
    p.add_argument("--only", nargs="+", choices=COMPONENTS, default=list(COMPONENTS),
                   help="prepare only these components (default: all)")
    args = parser.parse_args(argv)
    try:
        prepare(args.data_dir, args.only)
    except MissingSourceError as e:
        # One clear line, no traceback: the user only has to install a package.
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as e:  # a bad --data_dir, a full disk, a source failing its checksum
        print(f"error: could not prepare {args.data_dir!r}: {type(e).__name__}: {e} (prepare is atomic: "
              f"no partial dataset was left; fix the cause and rerun)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
