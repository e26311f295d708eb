"""``python -m domainbed_align.masks`` (users' scripts call it): the code is :mod:`domainbed_align.report.masks`."""

from domainbed_align.report.masks import main

if __name__ == "__main__":
    main()
