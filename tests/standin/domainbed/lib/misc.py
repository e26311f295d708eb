import hashlib


def seed_hash(*args):
    """Stand-in: an integer seed derived from the arguments."""
    return int(hashlib.sha256(repr(args).encode()).hexdigest()[:8], 16)
