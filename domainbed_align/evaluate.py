"""``python -m domainbed_align.evaluate`` (users' scripts call it): ``domainbed-align evaluate``, run through :mod:`domainbed_align.cli`."""

import sys

from domainbed_align import cli

if __name__ == "__main__":
    sys.exit(cli.run("evaluate", sys.argv[1:]))
