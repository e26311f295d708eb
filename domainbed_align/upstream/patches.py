"""Registration into an unmodified DomainBed clone: the patches its modules get as they load (the functions the
rest of the package calls are :mod:`domainbed_align.upstream.adapter`'s).

:mod:`domainbed_align.upstream.hook` (installed by ``domainbed_align_hook.pth`` in every interpreter, and cheap) finds
DomainBed's modules as they are imported and calls :func:`patch_module` right after each module's body runs:

- ``algorithms``: every algorithm in our registry (:mod:`domainbed_align.methods.registry`) becomes a module attribute (``get_algorithm_class`` looks in
  ``globals()``) and are appended to ``ALGORITHMS`` (sweep's default list and collect_results' order); the class
  DomainBed sees keeps, in train.py, the checkpoint training-domain validation selects
  (:mod:`domainbed_align.upstream.checkpoint_keeper`) and, switched on, traces every step
  (:mod:`domainbed_align.upstream.step_trace`);
- ``hparams_registry``: ``_hparams`` is wrapped to add our hparams (``default_hparams``/``random_hparams``
  look it up at call time);
- ``datasets``: our offline datasets are added (the sweep process itself asks them for their environments), and
  ``MultipleEnvironmentImageFolder.__init__`` is wrapped to attach a mask folder (hparam ``mask_dir``, annotation
  methods only: :mod:`domainbed_align.annotations.folder`);
- ``lib.reporting``: ``load_records`` (collect_results' reader) says which results.jsonl is damaged and what to do,
  instead of a JSONDecodeError traceback that names no file;
- ``lib.misc``: ``Tee`` (the scripts' log file) names a missing folder, e.g. a mistyped ``collect_results
  --input_dir``, in one line instead of a traceback; when train.py opens its ``out.txt`` it takes the run's lock
  for the life of the process (:mod:`domainbed_align.runs.liveness`: how ``sweep status`` tells running);
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
    install_excepthook()  # first: a floor or patch error below is then reported in one line
    if module.__name__ in _NEED_TORCH:  # our torch code is about to be imported: below the floors, say so first
        from domainbed_align.floors import require_runtime

        require_runtime()  # its one line goes through the excepthook installed above
    patchers[module.__name__](module)
    setattr(module, _PATCHED_FLAG, True)


def _patch_algorithms(module: types.ModuleType) -> None:
    from domainbed_align.methods import registry  # checks the torch and timm floors (floors.require_runtime)
    from domainbed_align.upstream.adapter import upstream_hparam_names
    from domainbed_align.upstream.checkpoint_keeper import KeepsSelectedCheckpoint
    from domainbed_align.upstream.step_trace import TracesSteps

    for entry in registry.entries():
        name, core = entry.name, entry.cls
        # The keeper first (its __init__ and state_dict wrap ours), then the per-step trace (its update() wraps
        # ours), Algorithm after our class in the MRO: our __init__ runs, isinstance(x, Algorithm) holds.
        cls = type(name, (KeepsSelectedCheckpoint, TracesSteps, core, module.Algorithm),
                   {"__module__": module.__name__, "__qualname__": name, "__doc__": core.__doc__,
                    "known_hparam_names": staticmethod(upstream_hparam_names)})
        setattr(module, name, cls)
        if name not in module.ALGORITHMS:
            module.ALGORITHMS.append(name)


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
    from domainbed_align.upstream.train_script import is_train_process

    if _train_arguments_checked or not is_train_process():
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
    from domainbed_align.upstream.train_script import is_train_process

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
            if os.path.basename(fname) == "out.txt" and is_train_process():  # train.py's log: its --output_dir
                from domainbed_align.runs import liveness

                liveness.hold_run_lock(folder)  # held until the process ends: `sweep status` sees it running

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


def install_excepthook() -> None:
    """:func:`domainbed_align.errors.install_excepthook` with the ``DOMAINBED_ALIGN_TRACEBACK`` switch (a value the
    settings reader refuses also shows the traceback: nothing may raise in the hook). The settings module is
    imported now and held by the switch: when a failed import of this package is what the hook reports, importing
    it then would fail again."""
    from domainbed_align import settings
    from domainbed_align.errors import install_excepthook as install

    install(lambda: settings.value("traceback", fallback=True))
