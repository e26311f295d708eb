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
