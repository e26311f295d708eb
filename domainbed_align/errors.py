"""Errors that carry one user-facing message.

Every problem a user can fix (a bad hparam, missing weights, a diverged loss) raises a subclass of
:class:`DomainbedAlignError`. When such an error reaches the top of a DomainBed script, the excepthook that
the registration hook installs (:func:`install_excepthook`) prints just its message (no traceback), because the
message already names the culprit and the fix.

This is the bottom layer: it imports nothing of ours (``sys`` only at module level).
"""

import sys
from typing import Any, Callable

_INSTALLED_FLAG = "_domainbed_align_patched"


class DomainbedAlignError(Exception):
    """Base class for errors whose message is complete on its own."""


def did_you_mean(name: str, known) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``known`` to a misspelt ``name``, or ``""``."""
    import difflib

    match = difflib.get_close_matches(name, sorted(known), 1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def user_message(error: DomainbedAlignError) -> str:
    """The error's message, without the wrapper torch's DataLoader puts around an error raised in a worker process
    ("Caught X in DataLoader worker process 0. Original Traceback ...", the original message on its last line)."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    prefix = f"{type(error).__name__}: "
    return last.split(prefix, 1)[1] if prefix in last else text


def print_error(error: BaseException | str, command: str = "domainbed-align") -> None:
    """The one way a command reports a problem whose message already names the culprit and the fix: one line on
    stderr, ``<command>: error: <message>`` (the console command, every ``python -m`` form, the excepthook)."""
    message = user_message(error) if isinstance(error, DomainbedAlignError) else str(error)
    sys.stderr.write(f"{command}: error: {message}\n")
    sys.stderr.flush()


class MissingExtraError(DomainbedAlignError, ImportError):
    """An optional dependency a command needs is not installed; the message names the extra that installs it."""


class DependencyVersionError(DomainbedAlignError, ImportError):
    """torch or timm older than the release this package is tested with (:mod:`domainbed_align.floors`)."""


class HParamError(DomainbedAlignError, ValueError):
    """An unknown, missing or ill-typed hyperparameter."""


class PretrainedWeightsError(DomainbedAlignError, RuntimeError):
    """Pretrained weights were asked for but could not be loaded."""


class NonFiniteLossError(DomainbedAlignError, FloatingPointError):
    """A loss term became NaN or infinite."""


class ResultsFileError(DomainbedAlignError, ValueError):
    """A sweep's output cannot be read: a missing folder or a damaged results.jsonl."""


class CheckpointError(DomainbedAlignError, ValueError):
    """A DomainBed model.pkl that is missing, damaged, or holds a model this package does not define."""


class ExplanationInputError(DomainbedAlignError, ValueError):
    """Images or labels that explain() cannot take."""


class MetricInputError(DomainbedAlignError, ValueError):
    """Images, saliency maps, classes or settings that an explanation metric cannot take."""


def install_excepthook(show_traceback: Callable[[], bool]) -> None:
    """Our errors already say what to do: show their message, not a traceback through upstream's train.py (once per
    interpreter). ``show_traceback()`` is asked when one of our errors reaches the top (the callers pass the
    ``DOMAINBED_ALIGN_TRACEBACK`` setting, read so that it never raises: nothing may raise in the hook); it comes as
    an argument because this bottom layer may not import the settings. Everything the hook needs is imported
    before it runs: when a failed import of this package is what it reports, importing again would fail again."""
    if getattr(sys.excepthook, _INSTALLED_FLAG, False):
        return
    previous = sys.excepthook

    def excepthook(kind: type, error: BaseException, traceback: Any) -> None:
        if isinstance(error, DomainbedAlignError) and not show_traceback():
            print_error(error)
        else:  # anything unexpected keeps its traceback
            previous(kind, error, traceback)

    setattr(excepthook, _INSTALLED_FLAG, True)
    sys.excepthook = excepthook
