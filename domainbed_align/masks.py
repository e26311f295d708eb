"""``python -m domainbed_align.masks export`` (users' scripts call it): the code is
:mod:`domainbed_align.report.mask_export` (the mask-export command; not the masker, nor mask folders)."""

import sys

from domainbed_align.report.mask_export import main

if __name__ == "__main__":
    sys.exit(main())  # main's return value is the exit status (1: an error it explained)
