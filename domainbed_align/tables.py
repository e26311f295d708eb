"""``python -m domainbed_align.tables`` (users' scripts call it): ``domainbed-align tables``, run through :mod:`domainbed_align.cli`."""

import sys

from domainbed_align import cli

if __name__ == "__main__":
    sys.exit(cli.run("tables", sys.argv[1:]))
