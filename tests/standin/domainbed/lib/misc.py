import hashlib
import sys


def seed_hash(*args):
    """Stand-in: an integer seed derived from the arguments."""
    return int(hashlib.sha256(repr(args).encode()).hexdigest()[:8], 16)


class Tee:
    """Stand-in: the scripts' log file, written beside what they print."""

    def __init__(self, fname, mode="a"):
        self.stdout = sys.stdout
        self.file = open(fname, mode)

    def write(self, message):
        self.stdout.write(message)
        self.file.write(message)

    def flush(self):
        self.stdout.flush()
        self.file.flush()
