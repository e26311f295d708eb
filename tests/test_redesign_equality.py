"""The redesign changed no number: every registered method's seeded updates on the pre-redesign commit (built in a
``git worktree`` in this job) and on the current tree give identical losses, gradients, parameters, logits and
explanations. Both runs happen here, on this machine, so no float goldens are committed (AVX2 and AVX-512 machines
sum differently)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PRE_REDESIGN = "6bf3027cc7c571106ca7ad0afebf0589933c0dce"  # main before issue 27's redesign
SEQUENCE = Path(__file__).with_name("step_sequence.py")


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def _sequence(package_root: Path, out: Path) -> dict:
    """step_sequence.py with only ``package_root``'s package importable as domainbed_align: ``-S`` skips the .pth
    files (the editable install's finder would map domainbed_align's subpackages to this checkout, and the
    registration hook would import it), and the site-packages come back, without their .pth files, on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOMAINBED_ALIGN_", "DOMAINBED_ROOT"))}
    env["PYTHONPATH"] = os.pathsep.join([str(package_root), *site.getsitepackages()])
    done = subprocess.run([sys.executable, "-S", str(SEQUENCE), "--out", str(out)], cwd=out.parent, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(out, weights_only=False)
    for loaded in [result["package"], *result["loaded_from"]]:
        assert Path(loaded).resolve().is_relative_to(package_root.resolve()), loaded
    return result


def _differences(before, after, where: str = "") -> list[str]:
    if isinstance(before, dict):
        if set(before) != set(after):
            return [f"{where}: keys {sorted(set(before) ^ set(after))} differ"]
        return [d for key in before for d in _differences(before[key], after[key], f"{where}/{key}")]
    if isinstance(before, list):
        return [d for i, (b, a) in enumerate(zip(before, after, strict=True)) for d in _differences(b, a, f"{where}[{i}]")]
    if isinstance(before, torch.Tensor):
        same = before.dtype == after.dtype and before.shape == after.shape and torch.equal(before, after)
        return [] if same else [f"{where}: max |diff| {(before.double() - after.double()).abs().max().item():.3g}"]
    return [] if before == after else [f"{where}: {before!r} != {after!r}"]


def test_every_method_updates_exactly_as_before_the_redesign(tmp_path):
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the pre-redesign commit cannot be built")
    if _git("cat-file", "-e", f"{PRE_REDESIGN}^{{commit}}").returncode != 0:
        pytest.fail(f"commit {PRE_REDESIGN[:7]} (before the redesign) is not in this clone: git fetch --unshallow")
    worktree = tmp_path / "pre_redesign"
    added = _git("worktree", "add", "--detach", str(worktree), PRE_REDESIGN)
    assert added.returncode == 0, added.stderr
    try:
        before = _sequence(worktree, tmp_path / "before.pt")
    finally:
        _git("worktree", "remove", "--force", str(worktree))
        _git("worktree", "prune")
    after = _sequence(ROOT, tmp_path / "after.pt")
    assert set(before["names"]) <= set(after["names"])
    assert len(before["names"]) == 10  # every method of the release: none silently skipped
    differences = [d for name in before["names"] for d in _differences(before["runs"][name], after["runs"][name], name)]
    assert not differences, "\n".join(differences[:20])
