"""Collapse warnings: each fires once, after its condition held at every step of a window, naming the hparams."""

import io

from domainbed_align.methods.monitor import CollapseMonitor


def _feed(monitor: CollapseMonitor, floats_per_step: list[dict]) -> list[str]:
    for step, floats in enumerate(floats_per_step):
        monitor.observe(step, floats)
    return monitor.fired


def test_blank_grad_cams_warn_once_after_a_full_window():
    monitor = CollapseMonitor("DRE", window=3, stream=io.StringIO())
    fired = _feed(monitor, [{"zero_cams": 0.9}] * 2 + [{"zero_cams": 0.1}] + [{"zero_cams": 0.6}] * 5)
    assert len(fired) == 1  # the interrupted run of two steps did not count
    assert fired[0].startswith("domainbed_align warning: DRE at step 5: ") and "steps 3-5" in fired[0]
    assert "'train_cam_relu'" in fired[0] and "'lambda_align'" in fired[0]
    assert monitor.stream.getvalue() == fired[0] + "\n"


def test_half_blank_is_not_a_collapse():
    assert _feed(CollapseMonitor("DRE", window=2, stream=io.StringIO()), [{"zero_cams": 0.5}] * 6) == []


def test_mask_rules_wait_for_the_masker():
    monitor = CollapseMonitor("ALIGN", window=2, stream=io.StringIO())
    warmup = [{"mask_mean": 0.0, "in_warmup": 1.0}] * 4  # the masker is not trained yet: its 0 means nothing
    empty = [{"mask_mean": 0.01, "in_warmup": 0.0}] * 2
    full = [{"mask_mean": 0.99, "in_warmup": 0.0}] * 2
    fired = _feed(monitor, warmup + empty + full + empty)
    assert len(fired) == 2
    assert "under 2% of the pixels" in fired[0] and "'lambda_sparsity' (lower)" in fired[0]
    assert "over 98% of the pixels" in fired[1] and "'lambda_sparsity' (higher)" in fired[1]


def test_a_finite_divergence_warns_once_after_ten_steps_over_a_thousand_times_the_first_loss():
    monitor = CollapseMonitor("TimmERM", stream=io.StringIO())
    healthy = [{"ce": 2.3}, {"ce": 40.0}, {"ce": 900.0}]  # a bad start, but under 1000 x 2.3
    exploding = [{"ce": 5e3}] * 9 + [{"ce": 1.0}] + [{"ce": 4.4e11}] * 10  # the run of 9 is broken by one good step
    fired = _feed(monitor, healthy + exploding)
    assert len(fired) == 1 and monitor.diverged
    assert fired[0].startswith("domainbed_align warning: TimmERM at step 22: the training cross-entropy was over 1000 "
                               "times its first value (2.3) in each of steps 13-22 (now 4.4e+11)")
    assert "Lower 'lr'" in fired[0]


def test_a_near_perfect_first_loss_is_no_hair_trigger():
    monitor = CollapseMonitor("TimmERM", stream=io.StringIO())
    assert _feed(monitor, [{"ce": 0.001}] + [{"ce": 50.0}] * 30) == [] and not monitor.diverged


def test_a_run_with_lr_1e6_is_reported_diverged_in_its_floats():
    import torch

    from domainbed_align.methods import hparams as hparams_lib
    from domainbed_align.methods.erm import TimmERM

    torch.manual_seed(0)
    algorithm = TimmERM((3, 28, 28), 3, 2, hparams_lib.default_hparams("TimmERM", "Debug28", lr=1e6))
    algorithm.monitor.stream = io.StringIO()
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 28, 28, generator=generator), torch.tensor([0, 1, 2, 0])) for _ in range(2)]
    reports = [algorithm.update(batches) for _ in range(25)]
    assert reports[0]["diverged"] == 0.0 and reports[-1]["diverged"] == 1.0
    assert max(report["ce"] for report in reports) > 1e4  # finite, so the non-finite guard stayed silent
    assert "has diverged" in algorithm.monitor.stream.getvalue()


# --- issue 29: the mask rules' window scales with the masker's phase ------------------------------------------------
def _align_like(mask_means: dict[int, float], steps: int = 500, warmup: int = 250) -> list[dict]:
    """ALIGN's reported floats of a ``steps``-step run: the classifier's warm-up (``in_warmup`` 1, ``mask_mean`` 0: the
    masker untouched), then the masker training at every step with a healthy mean near 0.1, or ``mask_means[step]``."""
    floats = []
    for step in range(steps):
        if step < warmup:
            floats.append({"mask_mean": 0.0, "in_warmup": 1.0})
        else:
            floats.append({"mask_mean": mask_means.get(step, 0.1 + 0.01 * ((step % 7) - 3)), "in_warmup": 0.0})
    return floats


def _medical_collapse() -> dict[int, float]:
    """The shape of ALIGN trained on `medical` alone (issue 29): the mean decays from under 2 % at step 420 to
    0.0004 at the last step, 499."""
    return {step: 0.019 * (0.0004 / 0.019) ** ((step - 420) / 79) for step in range(420, 500)}


def test_a_collapse_late_in_a_short_run_fires_once_naming_the_steps_the_value_and_the_hparams():
    import re

    from domainbed_align.methods import monitor as monitor_lib

    floats = _align_like(_medical_collapse())
    monitor = CollapseMonitor("ALIGN", stream=io.StringIO())
    fired = _feed(monitor, floats)
    assert len(fired) == 1, fired
    found = re.search(r"ALIGN at step (\d+): the masker's mask kept under 2% of the pixels in each of steps (\d+)-(\d+)",
                      fired[0])
    assert found, fired[0]
    step, first, last = map(int, found.groups())
    assert 420 <= first < last == step < 499  # inside the collapse, before the run ends
    # the window: a fifth of the masker's steps so far (250 from step 250 on), at least 10
    assert last - first + 1 == (step - 250 + 1) // monitor_lib.PHASE_SHARE == 42 and step == 461
    assert f"its mean now {floats[step]['mask_mean']:.2g}" in fired[0]
    for hparam in ("'sparsity_floor'", "'lambda_sparsity' (lower)", "'warmup_steps'", "'masker_warmup_steps'",
                   "'masker_lr'"):
        assert hparam in fired[0]
    # the rule before issue 29, a fixed window of WINDOW steps, could not fire: the collapse lasts 80 steps
    assert sum(1 for f in floats[420:] if f["mask_mean"] < monitor_lib.EMPTY_MASK) == 80 < monitor_lib.WINDOW
    fixed = CollapseMonitor("ALIGN", stream=io.StringIO(), min_window=monitor_lib.WINDOW)
    assert _feed(fixed, floats) == []


def test_a_brief_dip_in_a_healthy_mask_never_fires():
    dips = {step: 0.01 for start in (250, 300, 480) for step in range(start, start + 5)}  # 5 steps each, one at the
    dips.update({step: 0.99 for step in range(400, 405)})  # masker's very first steps; and a brief all-ones mask
    monitor = CollapseMonitor("ALIGN", stream=io.StringIO())
    assert _feed(monitor, _align_like(dips)) == []


def test_the_mask_window_is_a_fifth_of_the_phase_between_ten_and_a_hundred_steps():
    from domainbed_align.methods.monitor import MIN_WINDOW, RULES, WINDOW

    monitor = CollapseMonitor("ALIGN", stream=io.StringIO())
    rules = {rule.name: rule for rule in RULES}
    for name in ("empty_mask", "full_mask"):
        assert [monitor.window_for(rules[name], active) for active in (1, 54, 55, 250, 499, 500, 5000)] == \
            [MIN_WINDOW, 10, 11, 50, 99, WINDOW, WINDOW]
    for name in ("blank_cams", "no_annotations"):  # active from the very first step: fixed
        assert monitor.window_for(rules[name], 1) == WINDOW
    # the shortest window, 10 steps: an empty mask at the masker's start fires after 10 steps, not before
    ten = _align_like({step: 0.001 for step in range(250, 260)}, steps=300)
    assert len(_feed(CollapseMonitor("ALIGN", stream=io.StringIO()), ten)) == 1
    nine = _align_like({step: 0.001 for step in range(250, 259)}, steps=300)
    assert _feed(CollapseMonitor("ALIGN", stream=io.StringIO()), nine) == []


def test_the_logged_single_source_runs_flag_the_final_mask_of_align_trained_on_medical_alone():
    """results/texturemnist_single_source (issue 29): trained on `medical` alone (test_envs [0, 2, 3]), trial 0's mask
    ended at a mean of 0.0004; trial 1's fell to 0.009 and ended at 0.031; the other ALIGN runs end near 0.1."""
    from pathlib import Path

    from domainbed_align.runs.records import degenerate_mask, readable_records

    runs = Path(__file__).resolve().parents[1] / "results" / "texturemnist_single_source" / "runs"
    finals = {}
    for folder in sorted(runs.iterdir()):
        records = readable_records(folder)
        if records and records[-1]["args"]["algorithm"] == "ALIGN":
            args = records[-1]["args"]
            finals[(tuple(args["test_envs"]), args["trial_seed"])] = records[-1]
    assert len(finals) == 12  # four sources, three trials
    flagged = {key for key, record in finals.items() if degenerate_mask(record)}
    assert flagged == {((0, 2, 3), 0)}
    assert finals[((0, 2, 3), 0)]["mask_mean"] < 0.001 and finals[((0, 2, 3), 0)]["step"] == 499
    assert not degenerate_mask(finals[((0, 2, 3), 1)])  # recovered to 0.031 by its last interval


def test_the_monitor_fires_on_the_reproduced_collapse_where_train_py_did():
    """results/align_single_source_collapse/reproduction (issue 29): the medical-only runs again, traced step by step
    (DOMAINBED_ALIGN_TRACE_STEPS). Fed the traced floats, the monitor fires exactly where train.py's own err.txt says it
    fired (trials 0 and 1, whose masks emptied in the masker warm-up), and not for trial 2, whose mask held at 0.1."""
    import json
    import re
    from pathlib import Path

    runs = Path(__file__).resolve().parents[1] / "results" / "align_single_source_collapse" / "reproduction" / "runs"
    fired = {}
    for folder in sorted(runs.iterdir()):
        trial = json.loads((folder / "results.jsonl").read_text().splitlines()[-1])["args"]["trial_seed"]
        steps = [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]
        assert [s["step"] for s in steps] == list(range(500))
        monitor = CollapseMonitor("ALIGN", stream=io.StringIO())
        for record in steps:
            monitor.observe(record["step"], record)
        logged = re.findall(r"ALIGN at step (\d+): the masker's mask kept under 2%", (folder / "err.txt").read_text())
        replayed = [re.search(r"at step (\d+)", text).group(1) for text in monitor.fired]
        assert replayed == logged
        fired[trial] = [int(step) for step in logged]
    assert fired == {0: [318], 1: [308], 2: []}
