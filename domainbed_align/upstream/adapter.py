"""What the rest of the package asks of DomainBed, as small functions: whether it is importable, its registries'
names, a dataset class, upstream sweep's own jobs, its command launchers, and the pieces the explanation evaluation
reuses. Only this subpackage imports ``domainbed``; every function imports it when called (``domainbed`` must be
importable: :func:`domainbed_importable` says so, and the registration hook then adds our entries as it loads)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence


def domainbed_importable() -> bool:
    """Whether ``domainbed`` can be imported, putting ``$DOMAINBED_ROOT`` on sys.path first when it is not."""
    import importlib.util

    root = os.environ.get("DOMAINBED_ROOT")
    if importlib.util.find_spec("domainbed") is None and root and os.path.isdir(os.path.join(root, "domainbed")):
        sys.path.insert(0, root)
    return importlib.util.find_spec("domainbed") is not None


# --- registries -----------------------------------------------------------------------------------------------------
def algorithm_names() -> list[str]:
    """``domainbed.algorithms.ALGORITHMS`` (ours included), in its order."""
    import domainbed.algorithms

    return list(domainbed.algorithms.ALGORITHMS)


def dataset_names() -> list[str]:
    """``domainbed.datasets.DATASETS`` (ours included), in its order."""
    import domainbed.datasets

    return list(domainbed.datasets.DATASETS)


def registry_modules() -> tuple[Any, Any] | None:
    """``(domainbed.algorithms, domainbed.datasets)``, or None when DomainBed cannot be imported."""
    if not domainbed_importable():
        return None
    import domainbed.algorithms
    import domainbed.datasets

    return domainbed.algorithms, domainbed.datasets


def import_algorithm_registries() -> None:
    """Import ``domainbed.algorithms`` and ``domainbed.hparams_registry`` (patched as they load); whatever their
    import raises propagates, for the caller to report."""
    import domainbed.algorithms  # noqa: F401
    import domainbed.hparams_registry  # noqa: F401


def unregistered_algorithms(names: Sequence[str]) -> list[str]:
    """Those of ``names`` that ``domainbed.algorithms`` does not list or define."""
    import domainbed.algorithms as algorithms

    return [name for name in names if name not in algorithms.ALGORITHMS or not hasattr(algorithms, name)]


def unregistered_datasets(names: Sequence[str]) -> list[str]:
    """Those of ``names`` that ``domainbed.datasets`` does not list or define."""
    import domainbed.datasets as datasets

    return [name for name in names if name not in datasets.DATASETS or not hasattr(datasets, name)]


def default_hparams(algorithm: str, dataset: str) -> dict:
    """``domainbed.hparams_registry.default_hparams`` (ours included)."""
    import domainbed.hparams_registry as registry

    return registry.default_hparams(algorithm, dataset)


_hparam_names: list[frozenset] = []  # upstream_hparam_names' cache (filled once)


def upstream_hparam_names() -> frozenset:
    """Every hparam name any registered algorithm defines on any dataset.

    A sweep's --hparams goes to all its algorithms, so ALIGN must accept e.g. another algorithm's
    'mixup_alpha'; a name no algorithm defines is a typo.
    """
    import domainbed.algorithms
    import domainbed.datasets
    import domainbed.hparams_registry as registry

    if not _hparam_names:
        names: set[str] = set()
        for algorithm in domainbed.algorithms.ALGORITHMS:
            for dataset in domainbed.datasets.DATASETS:
                names.update(registry._hparams(algorithm, dataset, 0))
        _hparam_names.append(frozenset(names))
    return _hparam_names[0]


def upstream_dataset_class(name: str) -> Any:
    """DomainBed's dataset class ``name`` (ours included: the patch registers them): N_STEPS, ENVIRONMENTS, ..."""
    import domainbed.datasets

    return domainbed.datasets.get_dataset_class(name)


# --- upstream sweep's arguments, jobs and launchers -----------------------------------------------------------------
def add_sweep_arguments(p: argparse.ArgumentParser, datasets: list[str], algorithms: list[str]) -> None:
    """Upstream sweep's arguments, defaults and required flags (domainbed/scripts/sweep.py at b93c22a: its parser
    sits under ``__main__``, so they are declared again here), ``datasets`` and ``algorithms`` as the defaults."""
    p.add_argument("--datasets", nargs="+", type=str, default=datasets)
    p.add_argument("--algorithms", nargs="+", type=str, default=algorithms)
    p.add_argument("--task", type=str, default="domain_generalization")
    p.add_argument("--n_hparams_from", type=int, default=0)
    p.add_argument("--n_hparams", type=int, default=20)
    p.add_argument("--output_dir", type=str, required=True)
    p.add_argument("--data_dir", type=str, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_trials", type=int, default=3)
    p.add_argument("--command_launcher", type=str, default=None,
                   help="required for launch (upstream's: local, dummy, multi_gpu; ours: parallel, submitit_local, "
                        "slurm)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--hparams", type=str, default=None)
    p.add_argument("--holdout_fraction", type=float, default=0.2)
    p.add_argument("--single_test_envs", action="store_true")
    p.add_argument("--skip_confirmation", action="store_true")


def upstream_jobs(output_dir: str, data_dir: str, datasets: list[str], algorithms: list[str], n_hparams: int,
                  n_trials: int, steps: int | None, hparams: str | None, *, n_hparams_from: int = 0,
                  task: str = "domain_generalization", holdout_fraction: float = 0.2,
                  single_test_envs: bool = False, held_out_envs: Sequence[int] | None = None) -> list[Any]:
    """Upstream ``sweep``'s own jobs (``make_args_list`` + ``Job``): the arguments, seeds and md5-named folders
    ``sweep launch`` gives them. ``held_out_envs``: only the runs whose test environments include every one of these
    (a domain no run may train on, e.g. DecoyMNIST's randomized decoys)."""
    from domainbed.scripts import sweep

    args_list = sweep.make_args_list(n_trials=n_trials, dataset_names=datasets, algorithms=algorithms,
                                     n_hparams_from=n_hparams_from, n_hparams=n_hparams, steps=steps,
                                     data_dir=data_dir, task=task, holdout_fraction=holdout_fraction,
                                     single_test_envs=single_test_envs, hparams=hparams)
    return [sweep.Job(args, output_dir) for args in args_list
            if held_out_envs is None or set(held_out_envs) <= set(args["test_envs"])]


def upstream_sweep_jobs(output_dir: str, data_dir: str, dataset: str, algorithms: list[str],
                        test_envs: list[list[int]], n_hparams: int, n_trials: int, steps: int | None,
                        hparams: str | None) -> list[Any]:
    """Upstream ``sweep``'s own jobs (the same arguments, seeds and md5-named folders as ``sweep launch
    --single_test_envs``), restricted to ``test_envs``."""
    from domainbed.scripts import sweep

    args_list = sweep.make_args_list(n_trials=n_trials, dataset_names=[dataset], algorithms=algorithms,
                                     n_hparams_from=0, n_hparams=n_hparams, steps=steps, data_dir=data_dir,
                                     task="domain_generalization", holdout_fraction=0.2, single_test_envs=True,
                                     hparams=hparams)
    return [sweep.Job(args, output_dir) for args in args_list if args["test_envs"] in test_envs]


def upstream_single_source_jobs(output_dir: str, data_dir: str, datasets: list[str], algorithms: list[str],
                                n_hparams: int, n_trials: int, steps: int | None, hparams: str | None,
                                n_hparams_from: int = 0, task: str = "domain_generalization",
                                holdout_fraction: float = 0.2, source_envs: Sequence[int] | None = None) -> list[Any]:
    """Single-source jobs as upstream ``Job``s: for each of upstream's single-test-environment arguments, the same
    run with that environment as its only training domain (``test_envs`` = every other one) and the seed upstream's
    ``seed_hash`` gives those test environments; md5-named folders as ``sweep launch`` makes them. ``source_envs``:
    only the runs trained on these environments (None: every one)."""
    import domainbed.datasets
    from domainbed.lib import misc
    from domainbed.scripts import sweep

    jobs = []
    for args in sweep.make_args_list(n_trials=n_trials, dataset_names=datasets, algorithms=algorithms,
                                     n_hparams_from=n_hparams_from, n_hparams=n_hparams, steps=steps,
                                     data_dir=data_dir, task=task, holdout_fraction=holdout_fraction,
                                     single_test_envs=True, hparams=hparams):
        source = args["test_envs"][0]
        if source_envs is not None and source not in source_envs:
            continue
        others = [e for e in range(domainbed.datasets.num_environments(args["dataset"])) if e != source]
        args = dict(args, test_envs=others)
        args["seed"] = misc.seed_hash(args["dataset"], args["algorithm"], others, args["hparams_seed"],
                                      args["trial_seed"])
        jobs.append(sweep.Job(args, output_dir))
    return jobs


def upstream_protocol_jobs(output_dir: str, data_dir: str, datasets: list[str], algorithms: list[str],
                           n_hparams: int, n_trials: int, steps: int | None, hparams: str | None,
                           pairs: bool) -> list[Any]:
    """DomainBed's protocol as ``sweep launch`` makes it: one held-out domain per run (``pairs``: also every pair
    of held-out domains, which leave-one-domain-out selection needs)."""
    return upstream_jobs(output_dir, data_dir, datasets, algorithms, n_hparams, n_trials, steps, hparams,
                         single_test_envs=not pairs)


def command_launcher_names() -> list[str]:
    """The names in ``domainbed.command_launchers.REGISTRY`` (ours included), sorted."""
    from domainbed import command_launchers

    return sorted(command_launchers.REGISTRY)


def launch_jobs(jobs: list[Any], launcher: str) -> None:
    """Upstream's ``Job.launch`` of ``jobs`` with the command launcher named ``launcher``."""
    from domainbed import command_launchers
    from domainbed.scripts import sweep

    sweep.Job.launch(jobs, command_launchers.REGISTRY[launcher])


# --- upstream pieces the explanation evaluation reuses (so its images are the ones train.py held out) -----------------
def upstream_dataset(name: str, data_dir: str, test_envs: list[int], hparams: dict) -> Any:
    """DomainBed's dataset ``name`` (ours included: the patch registers them) as train.py builds it."""
    import domainbed.datasets

    if name not in domainbed.datasets.DATASETS:
        from domainbed_align.errors import CheckpointError

        raise CheckpointError(f"the run used dataset {name!r}, which this DomainBed does not define.")
    return getattr(domainbed.datasets, name)(data_dir, test_envs, hparams)


def upstream_holdout_indices(environment: Any, holdout_fraction: float, trial_seed: int, env_index: int) -> list[int]:
    """The indices of one environment's held-out ("out") part, split exactly as train.py splits it for that run."""
    from domainbed.lib import misc

    out, _ = misc.split_dataset(environment, int(len(environment) * holdout_fraction),
                                misc.seed_hash(trial_seed, env_index))
    return list(out.keys)
