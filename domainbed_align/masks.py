"""``python -m domainbed_align.masks`` (users' scripts call it): ``domainbed-align masks``, run through :mod:`domainbed_align.cli`."""

import sys

from domainbed_align import cli

if __name__ == "__main__":
    sys.exit(cli.run("masks", sys.argv[1:]))
