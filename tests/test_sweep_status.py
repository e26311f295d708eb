"""``sweep status`` without DomainBed: what it prints for runs whose records say they diverged."""

import json
from types import SimpleNamespace

from domainbed_align import sweep
from domainbed_align.runs import liveness


def _run(folder, diverged_per_checkpoint):
    folder.mkdir()
    lines = [json.dumps({"step": 100 * i, "args": {}, "diverged": value}) for i, value in
             enumerate(diverged_per_checkpoint)]
    (folder / "results.jsonl").write_text("".join(line + "\n" for line in lines))
    (folder / "done").write_text("done")
    return SimpleNamespace(output_dir=str(folder), train_args={"dataset": "Debug28", "algorithm": "TimmERM",
                                                               "test_envs": [0], "hparams_seed": 0, "trial_seed": 0})


def test_status_lists_the_runs_whose_last_record_says_diverged(tmp_path, capsys):
    healthy = _run(tmp_path / "healthy", [0.0, 0.0])
    diverged = _run(tmp_path / "diverged", [0.0, 0.4])  # it diverged during the last checkpoint interval
    recovered_key_missing = _run(tmp_path / "old", [])  # no records: nothing to say
    jobs = [healthy, diverged, recovered_key_missing]
    sweep.print_status(jobs, [liveness.RunState(liveness.DONE)] * 3)
    out = capsys.readouterr().out
    assert "diverged runs (1; their accuracies mean nothing: see err.txt, lower 'lr'):" in out
    assert f"  {diverged.output_dir} (Debug28 TimmERM" in out and healthy.output_dir + " (" not in out
    assert sweep.has_diverged(diverged.output_dir) and not sweep.has_diverged(healthy.output_dir)
