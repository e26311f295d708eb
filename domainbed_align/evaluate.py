"""``python -m domainbed_align.evaluate`` (users' scripts call it): the code is :mod:`domainbed_align.report.evaluate`."""

import sys

from domainbed_align.report.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
