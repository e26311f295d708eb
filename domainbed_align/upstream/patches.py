"""The only code that touches DomainBed's modules: registration into an unmodified clone, and the adapter the
rest of the package calls (``upstream_*``).

:mod:`domainbed_align.upstream.hook` (installed by ``domainbed_align_hook.pth`` in every interpreter, and cheap) finds
DomainBed's modules as they are imported and calls :func:`patch_module` right after each module's body runs:

- ``algorithms``: every algorithm in our registry (:mod:`domainbed_align.methods.registry`) becomes a module attribute (``get_algorithm_class`` looks in
  ``globals()``) and are appended to ``ALGORITHMS`` (sweep's default list and collect_results' order);
- ``hparams_registry``: ``_hparams`` is wrapped to add our hparams (``default_hparams``/``random_hparams``
  look it up at call time);
- ``datasets``: our offline datasets are added (the sweep process itself asks them for their environments), and
  ``MultipleEnvironmentImageFolder.__init__`` is wrapped to attach a mask folder (hparam ``mask_dir``, annotation
  methods only: :mod:`domainbed_align.annotations.folder`);
- ``lib.reporting``: ``load_records`` (collect_results' reader) says which results.jsonl is damaged and what to do,
  instead of a JSONDecodeError traceback that names no file;
- ``lib.misc``: ``Tee`` (the scripts' log file) names a missing folder, e.g. a mistyped ``collect_results
  --input_dir``, in one line instead of a traceback; when train.py opens its ``out.txt`` it records the run's
  folder, where our algorithms keep ``model_selected.pkl`` (:mod:`domainbed_align.report.selection`), and takes the
  run's lock for the life of the process (:mod:`domainbed_align.runs.liveness`: how ``sweep status`` tells running);
- ``command_launchers``: our ``slurm``, ``submitit_local`` and ``parallel`` launchers join ``REGISTRY``
  (:mod:`domainbed_align.runs.launchers`);
- ``lib.fast_data_loader``: ``InfiniteDataLoader`` refuses a batch larger than its split (it would hang).

Everything is idempotent, and nothing here may break interpreter start-up.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from typing import Any

_PATCHED_FLAG = "_domainbed_align_patched"
_NEED_TORCH = ("domainbed.algorithms", "domainbed.hparams_registry", "domainbed.datasets")


def patch_all_now() -> None:
    """Import DomainBed's registries (patching them through the finder)."""
    import domainbed.algorithms  # noqa: F401
    import domainbed.datasets  # noqa: F401
    import domainbed.hparams_registry  # noqa: F401


def patch_module(module: types.ModuleType) -> None:
    if getattr(module, _PATCHED_FLAG, False):
        return
    patchers = {"domainbed.algorithms": _patch_algorithms, "domainbed.hparams_registry": _patch_hparams,
                "domainbed.datasets": _patch_datasets, "domainbed.lib.reporting": _patch_reporting,
                "domainbed.lib.misc": _patch_misc, "domainbed.command_launchers": _patch_command_launchers,
                "domainbed.lib.fast_data_loader": _patch_fast_data_loader}
    if module.__name__ in _NEED_TORCH:  # our torch code is about to be imported: below the floors, say so first
        from domainbed_align.floors import require_runtime

        require_runtime()
    patchers[module.__name__](module)
    setattr(module, _PATCHED_FLAG, True)
    install_excepthook()


def _patch_algorithms(module: types.ModuleType) -> None:
    from domainbed_align.methods import registry  # checks the torch and timm floors (floors.require_runtime)

    for entry in registry.entries():
        name, core = entry.name, entry.cls
        # Algorithm after our class in the MRO: our __init__ runs, isinstance(x, Algorithm) holds.
        cls = type(name, (core, module.Algorithm), {"__module__": module.__name__, "__qualname__": name,
                                                     "__doc__": core.__doc__,
                                                     "known_hparam_names": staticmethod(upstream_hparam_names)})
        setattr(module, name, cls)
        if name not in module.ALGORITHMS:
            module.ALGORITHMS.append(name)


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


def _patch_hparams(module: types.ModuleType) -> None:
    from domainbed_align.methods import hparams as ours
    from domainbed_align.methods import registry

    names = registry.algorithm_names()

    original = module._hparams

    def _hparams(algorithm: str, dataset: str, random_seed: int) -> dict:
        from domainbed.lib import misc

        _check_train_arguments_once()

        entries = original(algorithm, dataset, random_seed)
        entries.update(ours.dataset_entries(dataset, random_seed, misc.seed_hash))
        if algorithm in names:
            entries.update(ours.registry_entries(algorithm, dataset, random_seed, misc.seed_hash))
        return entries

    _hparams.__wrapped__ = original
    _hparams.__doc__ = original.__doc__
    module._hparams = _hparams


_train_arguments_checked: list[bool] = []


def _check_train_arguments_once() -> None:
    """In train.py, its command line is checked when it first asks for hparams: after printing its arguments,
    before printing the hparams or loading any data (:mod:`domainbed_align.upstream.preflight`)."""
    if _train_arguments_checked or not _main_is_train():
        return
    _train_arguments_checked.append(True)  # first: the check itself asks for hparams
    from domainbed_align.upstream.preflight import check_train_arguments

    check_train_arguments(sys.argv[1:])


def _patch_datasets(module: types.ModuleType) -> None:
    from domainbed_align.data import DATASETS as ours

    for name, cls in ours.items():
        setattr(module, name, cls)
        if name not in module.DATASETS:
            module.DATASETS.append(name)
    image_folders = getattr(module, "MultipleEnvironmentImageFolder", None)  # absent from stand-ins and forks
    if isinstance(image_folders, type):
        _patch_image_folders(image_folders)


def _patch_image_folders(cls: type) -> None:
    """Mask folders for every image-folder dataset (VLCS, PACS, OfficeHome, TerraIncognita, DomainNet, ...): they
    all build their environments in ``MultipleEnvironmentImageFolder.__init__``, which gets the hparams."""
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self: Any, root: str, test_envs: Any, augment: bool, hparams: dict, *args: Any,
                 **kwargs: Any) -> None:
        original(self, root, test_envs, augment, hparams, *args, **kwargs)
        from domainbed_align.annotations.folder import attach_mask_folder

        attach_mask_folder(self, test_envs, hparams)

    cls.__init__ = __init__


def _patch_reporting(module: types.ModuleType) -> None:
    original = module.load_records

    @functools.wraps(original)
    def load_records(path: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(path, *args, **kwargs)
        except (ValueError, OSError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            from domainbed_align.runs.records import check_results_files

            check_results_files(path)  # raises, naming the file(s) and the fix, when the folder is the cause
            raise  # something else: upstream's own error, unchanged

    module.load_records = load_records


def _patch_misc(module: types.ModuleType) -> None:
    original = module.Tee

    class Tee(original):
        __doc__ = original.__doc__

        def __init__(self, fname: str, *args: Any, **kwargs: Any) -> None:
            folder = os.path.dirname(fname) or "."
            if not os.path.isdir(folder):
                from domainbed_align.errors import ResultsFileError

                raise ResultsFileError(
                    f"{folder!r} is not a folder, so DomainBed cannot write {os.path.basename(fname)!r} there; for "
                    f"collect_results give --input_dir the --output_dir that 'sweep launch' wrote to.")
            super().__init__(fname, *args, **kwargs)
            if os.path.basename(fname) == "out.txt" and _main_is_train():  # train.py's log: its --output_dir
                from domainbed_align.runs import liveness
                from domainbed_align.report import selection

                liveness.hold_run_lock(folder)  # held until the process ends: `sweep status` sees it running
                selection.note_train_output_dir(folder)

    Tee.__module__, Tee.__qualname__ = original.__module__, original.__qualname__
    module.Tee = Tee


def _patch_fast_data_loader(module: types.ModuleType) -> None:
    """A training split smaller than the batch size makes upstream's InfiniteDataLoader wait forever (it drops
    incomplete batches and samples len(split) indices per pass): refuse it before the loader starts."""
    original = module.InfiniteDataLoader.__init__

    @functools.wraps(original)
    def __init__(self: Any, dataset: Any, weights: Any, batch_size: int, *args: Any, **kwargs: Any) -> None:
        if weights is None and batch_size > len(dataset):
            from domainbed_align.errors import HParamError

            raise HParamError(
                f"batch_size {batch_size} is larger than a training split of {len(dataset)} examples: DomainBed's "
                f"InfiniteDataLoader drops incomplete batches, so it would never yield one and the run would hang. "
                f"Pass --hparams '{{\"batch_size\": {len(dataset)}}}' or less (Debug28's splits hold about 13).")
        original(self, dataset, weights, batch_size, *args, **kwargs)

    module.InfiniteDataLoader.__init__ = __init__


def _patch_command_launchers(module: types.ModuleType) -> None:
    """Our launchers (slurm, submitit_local, parallel) join upstream's; a name upstream already has stays its.
    Upstream's ``local`` and ``multi_gpu`` are wrapped to record their runs as queued by this process first, so
    that ``sweep status`` / ``delete_incomplete`` know a run upstream's own sweep has yet to start is live."""
    from domainbed_align.runs import launchers

    for name, launcher in launchers.REGISTRY.items():
        module.REGISTRY.setdefault(name, launcher)
    for name in ("local", "multi_gpu"):
        original = module.REGISTRY.get(name)
        if callable(original) and not getattr(original, _PATCHED_FLAG, False):
            module.REGISTRY[name] = _recording(original, name)


def _recording(launcher: Any, name: str) -> Any:
    @functools.wraps(launcher)
    def launch(commands: list[str]) -> Any:
        from domainbed_align.runs import launchers
        from domainbed_align.runs import liveness

        for command in commands:
            try:
                run_dir = launchers.run_dir_of(command)
            except Exception:  # a command without --output_dir: nothing to record
                continue
            if os.path.isdir(run_dir):
                liveness.write_job_record(run_dir, **liveness.launcher_record(name))
        return launcher(commands)

    setattr(launch, _PATCHED_FLAG, True)
    return launch


def _main_is_train() -> bool:
    """Whether this interpreter runs DomainBed's train.py (``python -m domainbed.scripts.train`` or its path)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "domainbed.scripts.train":
        return True
    return os.path.normpath(getattr(main, "__file__", "") or "").endswith(os.path.join("domainbed", "scripts",
                                                                                     "train.py"))


def install_excepthook() -> None:
    """Our errors already say what to do: show their message, not a traceback through upstream's train.py.
    ``DOMAINBED_ALIGN_TRACEBACK=1`` shows our errors' traceback too (a value the settings reader refuses also does:
    nothing may raise in the hook). What the hook needs is imported now: when a failed import of this package is
    what it reports, importing the package again from the hook would fail again."""
    if getattr(sys.excepthook, _PATCHED_FLAG, False):
        return
    from domainbed_align import settings
    from domainbed_align.errors import DomainbedAlignError, user_message

    previous = sys.excepthook

    def excepthook(kind: type, error: BaseException, traceback: Any) -> None:
        if isinstance(error, DomainbedAlignError) and not settings.value("traceback", fallback=True):
            sys.stderr.write(f"domainbed-align: error: {user_message(error)}\n")
        else:  # anything unexpected keeps its traceback
            previous(kind, error, traceback)

    setattr(excepthook, _PATCHED_FLAG, True)
    sys.excepthook = excepthook


# --- Upstream pieces the explanation evaluation reuses (so its images are the ones train.py held out) ------------
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


def upstream_sweep_jobs(output_dir: str, data_dir: str, dataset: str, algorithms: list[str],
                        test_envs: list[list[int]], n_hparams: int, n_trials: int, steps: int | None,
                        hparams: str | None) -> list[Any]:
    """Upstream ``sweep``'s own jobs (``make_args_list`` + ``Job``: the same arguments, seeds and md5-named folders
    as ``sweep launch --single_test_envs``), restricted to ``test_envs``. ``domainbed`` must be importable."""
    from domainbed.scripts import sweep

    args_list = sweep.make_args_list(n_trials=n_trials, dataset_names=[dataset], algorithms=algorithms,
                                     n_hparams_from=0, n_hparams=n_hparams, steps=steps, data_dir=data_dir,
                                     task="domain_generalization", holdout_fraction=0.2, single_test_envs=True,
                                     hparams=hparams)
    return [sweep.Job(args, output_dir) for args in args_list if args["test_envs"] in test_envs]


def upstream_single_source_jobs(output_dir: str, data_dir: str, datasets: list[str], algorithms: list[str],
                                n_hparams: int, n_trials: int, steps: int | None, hparams: str | None,
                                n_hparams_from: int = 0, task: str = "domain_generalization",
                                holdout_fraction: float = 0.2) -> list[Any]:
    """Single-source jobs as upstream ``Job``s: for each of upstream's single-test-environment arguments, the same
    run with that environment as its only training domain (``test_envs`` = every other one) and the seed upstream's
    ``seed_hash`` gives those test environments; md5-named folders as ``sweep launch`` makes them."""
    import domainbed.datasets
    from domainbed.lib import misc
    from domainbed.scripts import sweep

    jobs = []
    for args in sweep.make_args_list(n_trials=n_trials, dataset_names=datasets, algorithms=algorithms,
                                     n_hparams_from=n_hparams_from, n_hparams=n_hparams, steps=steps,
                                     data_dir=data_dir, task=task, holdout_fraction=holdout_fraction,
                                     single_test_envs=True, hparams=hparams):
        source = args["test_envs"][0]
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
    from domainbed.scripts import sweep

    args_list = sweep.make_args_list(n_trials=n_trials, dataset_names=datasets, algorithms=algorithms,
                                     n_hparams_from=0, n_hparams=n_hparams, steps=steps, data_dir=data_dir,
                                     task="domain_generalization", holdout_fraction=0.2,
                                     single_test_envs=not pairs, hparams=hparams)
    return [sweep.Job(args, output_dir) for args in args_list]


def upstream_dataset_class(name: str) -> Any:
    """DomainBed's dataset class ``name`` (ours included: the patch registers them): N_STEPS, ENVIRONMENTS, ..."""
    import domainbed.datasets

    return domainbed.datasets.get_dataset_class(name)


def domainbed_importable() -> bool:
    """Whether ``domainbed`` can be imported, putting ``$DOMAINBED_ROOT`` on sys.path first when it is not."""
    import importlib.util

    root = os.environ.get("DOMAINBED_ROOT")
    if importlib.util.find_spec("domainbed") is None and root and os.path.isdir(os.path.join(root, "domainbed")):
        sys.path.insert(0, root)
    return importlib.util.find_spec("domainbed") is not None

