"""What the boundary knows of a running DomainBed ``train.py``: whether this process is it, and the arguments of its
command line that we read (its own parser sits under ``__main__``, so the ones we need are declared again here with
train.py's defaults at b93c22a)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


def is_train_process() -> bool:
    """Whether this interpreter runs DomainBed's train.py (``python -m domainbed.scripts.train`` or its path)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "domainbed.scripts.train":
        return True
    return os.path.normpath(getattr(main, "__file__", "") or "").endswith(os.path.join("domainbed", "scripts",
                                                                                     "train.py"))


def train_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The arguments of train.py's command line ``argv`` that we read; the rest is train.py's own business."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--data_dir")
    parser.add_argument("--dataset", default="RotatedMNIST")  # train.py's defaults
    parser.add_argument("--algorithm", default="ERM")
    parser.add_argument("--hparams")
    parser.add_argument("--test_envs", type=int, nargs="+", default=[0])
    parser.add_argument("--output_dir", default="train_output")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--hparams_seed", type=int, default=0)
    known, _ = parser.parse_known_args(list(argv))
    return known


def train_output_dir() -> str | None:
    """The running train.py's ``--output_dir`` (where it writes results.jsonl), or None outside train.py."""
    if not is_train_process():
        return None
    return train_arguments(sys.argv[1:]).output_dir or "."  # train.py joins it with its file names
