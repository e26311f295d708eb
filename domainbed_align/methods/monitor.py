"""Loud collapses: one warning when a run's explanations or masks degenerate, naming the hparams to look at.

The trainer feeds every update()'s reported floats to :class:`CollapseMonitor`. A rule fires when its condition
holds at every step of a window, once per run, printed to stderr (upstream's train.py copies stderr into the run's
``err.txt``). Python's ``warnings`` is not used: sweeps run with warnings ignored.

The window: ``WINDOW`` update() calls for blank Grad-CAMs and missing annotations. The mask rules' window scales with
the masker's phase (issue 29): a fifth (``PHASE_SHARE``) of the steps the masker has trained so far, at least
``MIN_WINDOW``, at most ``WINDOW``. A fixed 100 misses any collapse that starts within a run's last 100 steps, and
every one in a masker phase shorter than that (issue 29: ALIGN trained 500 steps on one domain, warm-ups 250 + 100,
ended with a mask mean of 0.0004). With the scaling window a collapse late in a short run fires (after 250 masker
steps, a 50-step window), a brief dip does not (at least 10 steps), and a long run keeps the 100-step window. Each message names the step range, the value now and
the hparams to look at; :func:`domainbed_align.runs.records.degenerate_mask` marks a run whose final mask is
degenerate in the tables and evaluate.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping, TextIO

from domainbed_align.annotations import EMPTY_MASK, FULL_MASK  # what a degenerate mask is: runs' records read it too

WINDOW = 100  # update() calls; DomainBed's checkpoints are 100-300 steps apart on its datasets
# A scaling rule's window: the steps it has been active so far (counting this one) // PHASE_SHARE (20 %), clamped
# to [MIN_WINDOW, WINDOW]: a collapse must last a fifth of the phase so far, and never under MIN_WINDOW steps.
PHASE_SHARE = 5
MIN_WINDOW = 10
# Divergence that stays finite (the non-finite guard catches the rest): the cross-entropy over 1000 times its value
# at the first step (at least 1.0, so that a near-perfect pretrained start is no hair trigger) at every step of
# DIVERGENCE_WINDOW. Healthy runs stay within a few times ln(classes); an lr of 1e6 reaches 1e11 within 20 steps.
DIVERGENCE_FACTOR = 1000.0
DIVERGENCE_WINDOW = 10
ZERO_MAP_LIMIT = 0.5


@dataclass(frozen=True)
class Rule:
    name: str  # a rule fires once per run; CollapseMonitor.warn_once with this name counts as firing
    key: str  # the reported float the rule reads
    holds: Callable[[float], bool]
    active: Callable[[Mapping[str, float]], bool]  # whether this step counts (e.g. the masker is training)
    message: str  # what happened and which hparams to look at; {first}, {last}: the window's steps; {value}: now
    # whether the window scales with the steps the rule has been active (CollapseMonitor.window_for), else WINDOW
    scales: bool = False


# blank_cams and no_annotations keep the fixed window. They are active from the very first step, where a scaling
# window would be MIN_WINDOW steps long, and at the very start of training the Grad-CAMs can be blank spuriously: a
# freshly initialised head's class weights give the feature channels near-zero or negative weights, which the ReLU
# map zeroes, until a few dozen steps have trained it; a run still blank after WINDOW steps is reported. (A batch
# without annotations is reported at once by the trainer.) The mask rules count only once the masker trains, from
# a trained classifier.
RULES = (
    Rule("blank_cams", "zero_cams", lambda share: share > ZERO_MAP_LIMIT, lambda floats: True,
         "more than half of the true-class Grad-CAMs (standard ReLU map) were zero everywhere in each of "
         "steps {first}-{last}: explanations are blank and an alignment with them carries no signal. Look at "
         "'train_cam_relu' (false is DRE's map, which keeps a gradient), 'lambda_reg', 'lambda_align', "
         "'gradcam_layer' and 'warmup_steps'."),
    Rule("empty_mask", "mask_mean", lambda mean: mean < EMPTY_MASK, lambda floats: floats.get("in_warmup", 1.0) == 0.0,
         f"the masker's mask kept under {EMPTY_MASK:.0%} of the pixels in each of steps {{first}}-{{last}} (an empty "
         f"mask: the alignment target is blank; its mean now {{value:.2g}}). Look at 'sparsity_floor' (e.g. 0.05: "
         f"sparsity then stops at that share), 'lambda_sparsity' (lower), and at 'warmup_steps' / "
         f"'masker_warmup_steps' (longer: a classifier near chance gives the masker no fidelity signal), "
         f"'masker_lr'. results/align_single_source_collapse/ shows the mechanism.", scales=True),
    Rule("full_mask", "mask_mean", lambda mean: mean > FULL_MASK, lambda floats: floats.get("in_warmup", 1.0) == 0.0,
         f"the masker's mask kept over {FULL_MASK:.0%} of the pixels in each of steps {{first}}-{{last}} (an all-ones "
         f"mask selects nothing; its mean now {{value:.2g}}). Look at 'lambda_sparsity' (higher), 'masker_lr' and "
         f"'masker_warmup_steps'.", scales=True),
    Rule("no_annotations", "annotated", lambda share: share == 0.0, lambda floats: True,
         "no sample of steps {first}-{last} had an annotation mask: the explanation loss was zero and the method "
         "trained as plain ERM. Check the run's masks (a mask file or folder that does not match the dataset)."),
)


class CollapseMonitor:
    """Watches reported floats step by step; prints each rule's warning at most once."""

    def __init__(self, algorithm: str, window: int = WINDOW, stream: TextIO | None = None,
                 min_window: int = MIN_WINDOW) -> None:
        """``window``: the longest window (every rule's that does not scale); ``min_window``: a scaling rule's
        shortest (``min_window=window``: a fixed window for every rule, the rule before issue 29)."""
        self.algorithm = algorithm
        self.window = window
        self.min_window = min(min_window, window)
        self.stream = stream
        self.fired: list[str] = []  # the messages printed, in order
        self._runs = [deque(maxlen=window) for _ in RULES]  # steps at which each rule held, consecutively
        self._active = [0 for _ in RULES]  # steps at which each rule was active (its key reported), so far
        self._done: set[str] = set()  # names of the rules (and warn_once names) that fired
        self._first_ce: float | None = None
        self._diverging = 0  # consecutive steps over the divergence threshold

    @property
    def diverged(self) -> bool:
        """Whether the divergence warning has fired: the trainer reports it (``diverged``) at every later step."""
        return "diverged" in self._done

    def window_for(self, rule: Rule, active: int) -> int:
        """The window of ``rule`` after it has been active ``active`` steps (this one included): ``WINDOW`` (the
        monitor's ``window``), or for a scaling rule ``active // PHASE_SHARE`` clamped to [min_window, window]."""
        if not rule.scales:
            return self.window
        return max(self.min_window, min(self.window, active // PHASE_SHARE))

    def observe(self, step: int, floats: Mapping[str, float]) -> None:
        self._observe_divergence(step, floats)
        for index, rule in enumerate(RULES):
            run = self._runs[index]
            if rule.key not in floats or not rule.active(floats):
                run.clear()
                continue
            self._active[index] += 1
            if not rule.holds(floats[rule.key]):
                run.clear()
                continue
            run.append(step)
            window = self.window_for(rule, self._active[index])
            if len(run) >= window:  # a growing window: the run gains a step each step, the window at most one
                self.warn_once(rule.name, step, rule.message.format(first=run[-window], last=run[-1],
                                                                    value=float(floats[rule.key])))

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
