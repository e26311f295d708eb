"""The benchmark CLI runs and reports a complete, self-consistent JSON line (no speed thresholds: that is the
benchmark's job, not the tests')."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

from conftest import REPO

# Tiny: 28-px inputs (the classifier may upsample them), 2 envs x 2, one timed repeat after none.
ARGS = ["--device", "cpu", "--quick", "--size", "28", "--envs", "2", "--batch-per-env", "2", "--classes", "3",
        "--repeats", "1", "--warmup", "0", "--profile"]
TIMINGS = ("erm_ms", "align_ms", "gradcam_ms", "gradcam_nograph_ms", "gradcam_fp32_ms", "gradcam_autograd_ms",
           "forward_ms", "gradcam_reference_ms")
RATIOS = {"align_over_erm": ("align_ms", "erm_ms"), "gradcam_speedup": ("gradcam_reference_ms", "gradcam_ms"),
          "gradcam_speedup_fp32": ("gradcam_reference_ms", "gradcam_fp32_ms"),
          "gradcam_speedup_autograd": ("gradcam_reference_ms", "gradcam_autograd_ms"),
          "gradcam_speedup_explain": ("gradcam_reference_ms", "gradcam_nograph_ms"),
          "gradcam_over_forward": ("gradcam_ms", "forward_ms")}
KEYS = set(TIMINGS) | set(RATIOS) | {"methods",
    "erm_peak_mb", "align_peak_mb", "align_over_erm_memory", "targets", "meets_align_over_erm",
    "meets_gradcam_speedup", "meets_align_over_erm_memory", "device", "torch", "timm", "grad_cam", "backbone",
    "pretrained", "resolution", "classifier_input", "gradcam_layer", "gradcam_closed_form", "cam_side", "batch", "classes", "precision",
    "repeats", "warmup", "timing", "load_avg_1m", "pretrained"}


def test_bench_prints_one_consistent_json_line():
    process = subprocess.run([sys.executable, "-m", "domainbed_align.bench", *ARGS], cwd=REPO, capture_output=True,
                             text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert process.returncode == 0, process.stderr[-3000:]
    lines = process.stdout.splitlines()
    assert len(lines) == 1, f"stdout must be exactly one JSON line, got {process.stdout!r}"
    result = json.loads(lines[0])

    assert KEYS <= set(result), f"missing {sorted(KEYS - set(result))}"
    for key in TIMINGS:
        assert isinstance(result[key], float) and result[key] > 0, key
    for key, (numerator, denominator) in RATIOS.items():
        assert result[key] > 0
        assert math.isclose(result[key], result[numerator] / result[denominator], rel_tol=1e-3), key
    # every registered method, timed against TimmERM in the same interleaved rounds
    from domainbed_align.methods import registry

    methods = result["methods"]
    assert list(methods) == list(registry.algorithm_names())
    assert methods["TimmERM"]["ms"] == result["erm_ms"] and methods["ALIGN"]["ms"] == result["align_ms"]
    for name, row in methods.items():
        assert row["ms"] > 0 and math.isclose(row["over_erm"], row["ms"] / result["erm_ms"], rel_tol=1e-3), name
        # each method's time over its own pass-count floor (the README's table), not only over TimmERM's
        assert row["pass_floor"] == readme_pass_floors()[name], name
        assert math.isclose(row["over_floor"], row["over_erm"] / row["pass_floor"], rel_tol=1e-3), name
        assert row["peak_mb"] is None and row["memory_over_erm"] is None  # no CUDA
    # CPU: no peak-memory measurement, so no memory ratio and no verdict on it.
    assert result["erm_peak_mb"] is None and result["align_peak_mb"] is None
    assert result["align_over_erm_memory"] is None and result["meets_align_over_erm_memory"] is None
    # CUDA graphs exist only on CUDA: no timing, no speed-up, no correctness check of them here
    assert result["gradcam_speedup_cudagraph"] is None
    assert "gradcam_cudagraph_ms" not in result and "cudagraph_max_abs_diff" not in result
    assert result["targets"] == {"align_over_erm_max": 4.0, "gradcam_speedup_min": 20,
                                 "align_over_erm_memory_max": 2.5}
    assert result["meets_align_over_erm"] == (result["align_over_erm"] <= 4.0)
    assert result["meets_gradcam_speedup"] == (result["gradcam_speedup"] >= 20)
    assert result["pretrained"] is False and result["precision"] == "fp32"
    assert result["backbone"] == "resnet18" and result["resolution"] == 28
    assert isinstance(result["classifier_input"], int) and result["classifier_input"] >= 28  # upsampled or kept
    assert result["batch"] == "2x2" and result["repeats"] == 1 and result["warmup"] == 0
    assert result["torch"] and result["timm"] and result["grad_cam"] and result["device"]
    # 28 px -> 56 px input: Grad-CAM at layer2, where only the autograd form is exact
    assert result["gradcam_layer"] == "layer2" and result["gradcam_closed_form"] is False
    # --profile's tables go to stderr: one ALIGN update, then our Grad-CAM
    assert process.stderr.count("Self CPU time total") == 2
    assert "profile of one ALIGN update" in process.stderr and "profile of our Grad-CAM" in process.stderr


def readme_pass_floors() -> dict[str, float]:
    """Each method's floor as the README's table of methods states it: the last parenthesis of its cost cell, e.g.
    "(about 2 + 1.3)" -> 3.3, "(2 + a little)" -> 2, "(about 2-3)" -> 2; "as GRADIA" -> GRADIA's."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| method | trains on | cost per update()"):]
    floors: dict[str, float] = {}
    aliases: dict[str, str] = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("| `"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        name, cost = cells[0].strip("`"), cells[2]
        alias = re.fullmatch(r"as `?(\w+)`?", cost)
        if alias:
            aliases[name] = alias[1]
            continue
        group = re.search(r"\(([^()]*)\)\s*$", cost)
        assert group, f"README: no '(passes)' at the end of {name}'s cost cell: {cost!r}"
        number = re.search(r"(\d+(?:\.\d+)?)\s*(?:-\s*\d+(?:\.\d+)?)?(?:\s*\+\s*(\d+(?:\.\d+)?))?", group[1])
        floors[name] = round(float(number[1]) + float(number[2] or 0), 3)
    for name, other in aliases.items():
        floors[name] = floors[other]
    return floors


def test_pass_floors_are_the_readmes():
    from domainbed_align import bench
    from domainbed_align.methods import registry

    floors = readme_pass_floors()
    assert floors["ALIGN"] == 3.3 and floors["RRR"] == 2.0 and floors["HAICS"] == floors["GRADIA"] == 1.0  # parser
    assert bench.PASS_FLOORS == floors
    assert set(floors) == set(registry.algorithm_names())  # a new method needs its row and its floor


def test_methods_option_names_an_unknown_method():
    process = subprocess.run([sys.executable, "-m", "domainbed_align.bench", "--methods", "SGT", "Nope"], cwd=REPO,
                             capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert process.returncode == 2 and process.stdout == ""
    assert process.stderr.strip().splitlines()[-1].startswith(
        "domainbed-align bench: error: --methods: Nope not registered; choose from TimmERM DRE ALIGN")
