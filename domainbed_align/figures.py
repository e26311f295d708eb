"""``python -m domainbed_align.figures`` (users' scripts call it): the code is :mod:`domainbed_align.report.figures`."""

import sys

from domainbed_align.report.figures import main

if __name__ == "__main__":
    sys.exit(main())
