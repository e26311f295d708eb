"""A per-step trace of a train.py run: every update()'s reported floats, one JSON line each, in ``steps.jsonl``.

results.jsonl averages update()'s floats over each checkpoint interval (100-300 steps on DomainBed's datasets),
which hides how a masker collapses within one (issue 29). With ``DOMAINBED_ALIGN_TRACE_STEPS=1`` each of our
algorithms, as DomainBed sees it (:mod:`domainbed_align.upstream.patches` puts :class:`TracesSteps` in its bases),
appends ``{"step": s, **floats}`` after every update() to ``<--output_dir>/steps.jsonl`` and reports its diagnostic
floats too (``diagnostics``: ALIGN's masker-term gradient norms and masked-image probabilities). The trace changes no
step (tested). A write that fails (full disk) stops the trace with one warning; the training goes on.
"""

from __future__ import annotations

import json
import os
from typing import Any, TextIO

from domainbed_align.upstream import train_script

TRACE_FILE = "steps.jsonl"


def tracing_dir() -> str | None:
    """The running train.py's ``--output_dir`` when the trace is switched on; None otherwise (and outside train.py,
    where the switch is not read)."""
    folder = train_script.train_output_dir()
    if folder is None:
        return None
    from domainbed_align import settings  # checks every DOMAINBED_ALIGN_* variable: a misspelt switch is named

    return folder if settings.value("trace_steps") else None


class TracesSteps:
    """A base of ``domainbed.algorithms.<Name>`` (after the checkpoint keeper, before our class): in a traced train.py
    run it switches on the algorithm's diagnostics and appends every update()'s floats to steps.jsonl."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        folder = tracing_dir()
        self._trace: TextIO | None = None
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
            self._trace = open(os.path.join(folder, TRACE_FILE), "a", encoding="utf-8")
            self.diagnostics = True

    def update(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        floats = super().update(*args, **kwargs)
        if self._trace is not None:
            try:
                self._trace.write(json.dumps({"step": self.steps_done - 1, **floats}) + "\n")
                self._trace.flush()
            except OSError as error:
                self._trace = None
                self.monitor.warn_once("step_trace", self.steps_done, (
                    f"could not write {TRACE_FILE} ({error.strerror or type(error).__name__}); the per-step trace "
                    f"stops here, the training goes on. Free some space to trace a run."))
        return floats
