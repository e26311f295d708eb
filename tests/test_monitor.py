"""Collapse warnings: each fires once, after its condition held at every step of a window, naming the hparams."""

import io

from domainbed_align.monitor import CollapseMonitor


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
