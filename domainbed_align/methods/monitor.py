"""Loud collapses: one warning when a run's explanations or masks degenerate, naming the hparams to look at.

The trainer feeds every update()'s reported floats to :class:`CollapseMonitor`. A rule fires when its condition
holds at every step of a window (``WINDOW`` update() calls), once per run, printed to stderr (upstream's train.py
copies stderr into the run's ``err.txt``). Python's ``warnings`` is not used: sweeps run with warnings ignored.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping, TextIO

WINDOW = 100  # update() calls; DomainBed's checkpoints are 100-300 steps apart on its datasets
# Divergence that stays finite (the non-finite guard catches the rest): the cross-entropy over 1000 times its value
# at the first step (at least 1.0, so that a near-perfect pretrained start is no hair trigger) at every step of
# DIVERGENCE_WINDOW. Healthy runs stay within a few times ln(classes); an lr of 1e6 reaches 1e11 within 20 steps.
DIVERGENCE_FACTOR = 1000.0
DIVERGENCE_WINDOW = 10
ZERO_MAP_LIMIT = 0.5
EMPTY_MASK = 0.02
FULL_MASK = 0.98


@dataclass(frozen=True)
class Rule:
    name: str  # a rule fires once per run; CollapseMonitor.warn_once with this name counts as firing
    key: str  # the reported float the rule reads
    holds: Callable[[float], bool]
    active: Callable[[Mapping[str, float]], bool]  # whether this step counts (e.g. the masker is training)
    message: str  # what happened and which hparams to look at; {first}, {last} are the window's steps


RULES = (
    Rule("blank_cams", "zero_cams", lambda share: share > ZERO_MAP_LIMIT, lambda floats: True,
         "more than half of the true-class Grad-CAMs (standard ReLU map) were zero everywhere in each of "
         "steps {first}-{last}: explanations are blank and an alignment with them carries no signal. Look at "
         "'train_cam_relu' (false is DRE's map, which keeps a gradient), 'lambda_reg', 'lambda_align', "
         "'gradcam_layer' and 'warmup_steps'."),
    Rule("empty_mask", "mask_mean", lambda mean: mean < EMPTY_MASK, lambda floats: floats.get("in_warmup", 1.0) == 0.0,
         f"the masker's mask kept under {EMPTY_MASK:.0%} of the pixels in each of steps {{first}}-{{last}} (an empty "
         f"mask: the alignment target is blank). Look at 'lambda_sparsity' (lower), and at 'warmup_steps' / "
         f"'masker_warmup_steps' (longer: a classifier near chance gives the masker no fidelity signal), "
         f"'masker_lr'."),
    Rule("full_mask", "mask_mean", lambda mean: mean > FULL_MASK, lambda floats: floats.get("in_warmup", 1.0) == 0.0,
         f"the masker's mask kept over {FULL_MASK:.0%} of the pixels in each of steps {{first}}-{{last}} (an all-ones "
         f"mask selects nothing). Look at 'lambda_sparsity' (higher), 'masker_lr' and 'masker_warmup_steps'."),
    Rule("no_annotations", "annotated", lambda share: share == 0.0, lambda floats: True,
         "no sample of steps {first}-{last} had an annotation mask: the explanation loss was zero and the method "
         "trained as plain ERM. Check the run's masks (a mask file or folder that does not match the dataset)."),
)


class CollapseMonitor:
    """Watches reported floats step by step; prints each rule's warning at most once."""

    def __init__(self, algorithm: str, window: int = WINDOW, stream: TextIO | None = None) -> None:
        self.algorithm = algorithm
        self.window = window
        self.stream = stream
        self.fired: list[str] = []  # the messages printed, in order
        self._runs = [deque(maxlen=window) for _ in RULES]  # steps at which each rule held, consecutively
        self._done: set[str] = set()  # names of the rules (and warn_once names) that fired
        self._first_ce: float | None = None
        self._diverging = 0  # consecutive steps over the divergence threshold

    @property
    def diverged(self) -> bool:
        """Whether the divergence warning has fired: the trainer reports it (``diverged``) at every later step."""
        return "diverged" in self._done

    def observe(self, step: int, floats: Mapping[str, float]) -> None:
        self._observe_divergence(step, floats)
        for index, rule in enumerate(RULES):
            run = self._runs[index]
            if rule.key not in floats or not rule.active(floats) or not rule.holds(floats[rule.key]):
                run.clear()
                continue
            run.append(step)
            if len(run) == self.window:
                self.warn_once(rule.name, step, rule.message.format(first=run[0], last=run[-1]))

    def _observe_divergence(self, step: int, floats: Mapping[str, float]) -> None:
        ce = floats.get("ce")
        if ce is None:
            return
        if self._first_ce is None:
            self._first_ce = ce
        threshold = DIVERGENCE_FACTOR * max(self._first_ce, 1.0)
        self._diverging = self._diverging + 1 if ce > threshold else 0
        if self._diverging == DIVERGENCE_WINDOW:
            self.warn_once("diverged", step, (
                f"the training cross-entropy was over {DIVERGENCE_FACTOR:.0f} times its first value "
                f"({self._first_ce:.3g}) in each of steps {step - DIVERGENCE_WINDOW + 1}-{step} (now {ce:.3g}): the run "
                f"has diverged and its accuracies mean nothing; results.jsonl marks it ('diverged' 1.0), and tables "
                f"and sweep status show it. Lower 'lr' (and the lambda_* weights), then train it again."))

    def warn_once(self, name: str, step: int, message: str) -> None:
        """Print ``message`` unless a warning called ``name`` was printed already in this run."""
        if name in self._done:
            return
        self._done.add(name)
        text = f"domainbed_align warning: {self.algorithm} at step {step}: {message}"
        self.fired.append(text)
        print(text, file=self.stream or sys.stderr, flush=True)
