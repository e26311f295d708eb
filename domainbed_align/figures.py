"""``python -m domainbed_align.figures`` (users' scripts call it): ``domainbed-align figures``, run through :mod:`domainbed_align.cli`."""

import sys

from domainbed_align import cli

if __name__ == "__main__":
    sys.exit(cli.run("figures", sys.argv[1:]))
