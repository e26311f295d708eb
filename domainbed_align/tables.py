"""``python -m domainbed_align.tables`` (users' scripts call it): the code is :mod:`domainbed_align.report.tables`."""

import sys

from domainbed_align.report.tables import main

if __name__ == "__main__":
    sys.exit(main())
