"""Every ``DOMAINBED_ALIGN_*`` environment variable this package reads, declared once, and the one reader for them.

A setting is ``DOMAINBED_ALIGN_<KEY>`` in the environment; the launcher settings may also sit in a JSON file named by
``DOMAINBED_ALIGN_LAUNCHER_CONFIG`` (lower-case keys; the environment wins). Both go through the same checks, and
each problem is one :class:`SettingsError` naming the variable (or the file and key) and the fix:

- a ``DOMAINBED_ALIGN_*`` name that is not declared here (a misspelling would otherwise be ignored silently);
- a value of the wrong type: booleans take true/false, 1/0, yes/no, on/off in any case and nothing else, integers
  take whole numbers, numbers must be finite (no nan, inf);
- a value out of range (below a minimum, not one of the choices, a GPU id CUDA would not recognise).

An empty environment variable, or ``null`` in the file, means the default. ``python -m domainbed_align.settings``
lists every setting; ``python -m domainbed_align.doctor`` checks every one that is set.

Scopes: ``launcher`` settings (environment or file) configure the ``slurm``, ``submitit_local`` and ``parallel``
launchers; ``general`` ones are environment-only switches of the package itself; ``test`` ones are switches of the
test suite (``tests/``, ``.ci/run``), declared so that setting them is not an error.

Reading is cheap and happens only when a setting is used, never at interpreter start-up (the ``.pth`` hook must stay
light): at import time this module needs only ``os``, ``math`` and ``typing``; ``json`` and ``difflib`` come when
needed.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping

from domainbed_align.errors import DomainbedAlignError

PREFIX = "DOMAINBED_ALIGN_"
LAUNCHER, GENERAL, TEST = "launcher", "general", "test"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class SettingsError(DomainbedAlignError, ValueError):
    """An unknown ``DOMAINBED_ALIGN_*`` variable, or a setting of the wrong type or out of range.

    ``problem`` names the culprit, ``fix`` what to do (the doctor prints them apart); the message joins them."""

    def __init__(self, problem: str, fix: str = "") -> None:  # one positional form: pickles (args == (message,))
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.problem, self.fix = problem, fix


def _gpu_problem(value: str) -> str | None:
    """CUDA_VISIBLE_DEVICES takes indices and GPU/MIG UUIDs; anything else makes CUDA hide every GPU from it on."""
    if value.strip().lower() in ("", "none"):
        return None
    for entry in (part.strip() for part in value.split(",") if part.strip()):  # "0,1," is "0,1"
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            return f"entry {entry!r} is neither a GPU index (0, 1, ...) nor a GPU-/MIG- UUID"
    return None


class Setting:
    """One ``DOMAINBED_ALIGN_<KEY>``: its type, default, what it sets, and the values it may take."""

    __slots__ = ("key", "kind", "default", "doc", "scope", "minimum", "strictly_above", "choices", "check")

    def __init__(self, key: str, kind: type, default: Any, doc: str, scope: str, minimum: float | None = None,
                 strictly_above: bool = False, choices: tuple[str, ...] | None = None,
                 check: Callable[[Any], str | None] | None = None) -> None:
        self.key, self.kind, self.default, self.doc, self.scope = key, kind, default, doc, scope
        self.minimum, self.strictly_above, self.choices, self.check = minimum, strictly_above, choices, check

    @property
    def variable(self) -> str:
        return PREFIX + self.key.upper()

    def expected(self) -> str:
        """What a valid value looks like, for the fix."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind is bool:
            return "true or false (also 1/0, yes/no, on/off)"
        if self.kind in (int, float):
            what = "a whole number" if self.kind is int else "a finite number"
            if self.minimum is None:
                return what
            bound = self.minimum if self.kind is float else int(self.minimum)
            return f"{what} {'above' if self.strictly_above else 'of at least'} {bound}"
        if self.kind is list:
            return "shell lines (one per line; in the file, a list of strings)"
        if self.kind is dict:
            return 'a JSON object, e.g. {"qos": "low"}'
        if self.key == "gpus":
            return "GPU indices or GPU-/MIG- UUIDs separated by commas (e.g. 0,1), or none"
        return "a string"


_S = Setting
SETTINGS: dict[str, Setting] = {s.key: s for s in (
    # --- launchers (environment or the JSON file) ---
    _S("jobs", int, None, "parallel, submitit_local: runs at once (default: one per GPU x jobs_per_gpu, else one per "
                          "CPU core / threads_per_job)", LAUNCHER, minimum=1),
    _S("threads_per_job", int, None, "parallel, submitit_local: OMP/MKL threads per run (default: cores / jobs)",
       LAUNCHER, minimum=1),
    _S("gpus", str, None, "parallel, submitit_local: GPUs to share out, as indices or GPU-/MIG- UUIDs, e.g. '0,1', "
                          "or 'none' (default: every visible GPU)", LAUNCHER, check=_gpu_problem),
    _S("jobs_per_gpu", int, 1, "parallel, submitit_local: runs sharing one GPU", LAUNCHER, minimum=1),
    _S("timeout_min", int, 1440, "slurm, submitit_local: each run's time limit in minutes (explicit: "
                                 "submitit_local's own default is 2)", LAUNCHER, minimum=1),
    _S("slurm_partition", str, None, "slurm: partition (default: the cluster's default partition)", LAUNCHER),
    _S("slurm_gpus_per_task", int, 0, "slurm: GPUs per run (default none: GPUs are asked for, never assumed)",
       LAUNCHER, minimum=0),
    _S("slurm_cpus_per_task", int, 1, "slurm: CPUs per run", LAUNCHER, minimum=1),
    _S("slurm_mem_gb", float, None, "slurm: memory per run in GB (default: the cluster's)", LAUNCHER, minimum=0,
       strictly_above=True),
    _S("slurm_array_parallelism", int, 256, "slurm: array tasks running at once", LAUNCHER, minimum=1),
    _S("slurm_setup", list, [], "slurm: shell lines run before each job (environment variable: one per line)",
       LAUNCHER),
    _S("slurm_additional", dict, {}, "slurm: further sbatch options, e.g. {\"account\": \"x\", \"qos\": \"y\"}",
       LAUNCHER),
    _S("detach", bool, False, "slurm: return once submitted instead of waiting for the jobs", LAUNCHER),
    # --- the package (environment only) ---
    _S("launcher_config", str, None, "a JSON file of launcher settings (lower-case keys; the environment wins)",
       GENERAL),
    _S("keep_selected", bool, True, "train.py runs of our algorithms keep model_selected.pkl, the checkpoint "
                                    "training-domain validation selects", GENERAL),
    _S("trace_steps", bool, False, "train.py runs of our algorithms append every update()'s floats to steps.jsonl "
                                   "in the run's folder, with diagnostics (ALIGN: each masker term's gradient "
                                   "norm); changes no step", GENERAL),
    _S("traceback", bool, False, "our errors show Python's full traceback instead of one line (for debugging)",
       GENERAL),
    # --- the test suite (environment only; read by tests/ and .ci/run) ---
    _S("test_slurm", str, "0", "tests: run the real-Slurm tests (1: skip them when the cluster cannot start; "
                               "required: fail them)", TEST, choices=("0", "1", "required")),
    _S("floor_env", bool, False, "tests: this is the floor environment of tests/floor_env.sh", TEST),
)}
CONFIG_VARIABLE = SETTINGS["launcher_config"].variable


def _fresh(default: Any) -> Any:
    """A copy of a list or dict default, so that a caller changing its settings cannot change the declaration."""
    return type(default)(default) if isinstance(default, (list, dict)) else default


def _describe_default(setting: Setting) -> str:
    if setting.default is None:
        return "not set"
    return repr(setting.default) if not isinstance(setting.default, bool) else str(setting.default).lower()


def _checked(setting: Setting, raw: Any, from_text: bool, where: str, unset_hint: str) -> Any:
    """``raw`` as the setting's type and in its range; ``from_text``: an environment variable's string (the file's
    JSON values are typed already). ``where`` names the culprit, ``unset_hint`` how to get the default."""
    kind = setting.kind

    def refuse(why: str) -> SettingsError:
        default = "" if setting.default is None else f" ({_describe_default(setting)})"
        return SettingsError(f"{where} = {raw!r} {why} ({setting.key}, {setting.doc})",
                             f"give {setting.expected()}, or {unset_hint} for the default{default}")

    value: Any = raw
    if from_text:
        text = raw.strip()
        if kind is bool:
            if text.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise refuse("is not a boolean")
            return text.lower() in TRUE_WORDS
        if kind is int:
            try:
                value = int(text)
            except ValueError:
                raise refuse("is not an integer") from None
        elif kind is float:
            try:
                value = float(text)
            except ValueError:
                raise refuse("is not a number") from None
        elif kind is list:
            value = [line for line in raw.splitlines() if line.strip()]
        elif kind is dict:
            import json

            try:
                value = json.loads(raw)
            except ValueError:
                raise refuse("is not a JSON object") from None
        else:
            value = text
    # the same type checks for both sources (JSON gives bools where ints belong, NaN where numbers belong)
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise refuse("is not an integer")
    if kind is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise refuse("is not a number")
        value = float(value)
        if not math.isfinite(value):
            raise refuse("is not a finite number")
    if kind is bool and not isinstance(value, bool):
        raise refuse("is not a boolean")
    if kind is str and not isinstance(value, str):
        raise refuse("is not a string")
    if kind is list and not (isinstance(value, list) and all(isinstance(line, str) for line in value)):
        raise refuse("is not a list of lines")
    if kind is dict and not isinstance(value, dict):
        raise refuse("is not a JSON object")
    if setting.minimum is not None:
        if value < setting.minimum or (setting.strictly_above and value == setting.minimum):
            raise refuse("is out of range")
    if setting.choices is not None and value not in setting.choices:
        raise refuse("is not one of the choices")
    problem = setting.check(value) if setting.check is not None else None
    if problem:
        raise refuse(f"is not valid: {problem}")
    return value


def _unknown(name: str, known: list[str], what: str, fix: str, prefix: str = "") -> SettingsError:
    """``name`` is not declared: the closest declared name (compared without the ``prefix`` they all share, which
    would make every name look close), else where the list is."""
    import difflib

    tails = {k[len(prefix):].lower(): k for k in known}  # case-folded: DOMAINBED_ALIGN_jobs means ..._JOBS
    match = difflib.get_close_matches(name[len(prefix):].lower(), list(tails), 1)
    hint = f" (did you mean {tails[match[0]]}?)" if match else ""
    listing = "" if match else "; `python -m domainbed_align.settings` lists them"
    return SettingsError(f"{name} is not {what}{hint}", fix + listing)


def check_name(name: str) -> Setting:
    """The declared setting of the variable ``name`` (``DOMAINBED_ALIGN_*``), or the error naming it."""
    key = name[len(PREFIX):].lower()
    if name.startswith(PREFIX) and name == PREFIX + key.upper() and key in SETTINGS:
        return SETTINGS[key]
    raise _unknown(name, sorted(s.variable for s in SETTINGS.values()), "a domainbed-align setting, so it would be "
                   "ignored", f"rename it or unset it (unset {name})", PREFIX)


def _environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Every ``DOMAINBED_ALIGN_*`` variable in ``environ``, checked (names, types, ranges): key -> value (empty
    variables are left out: they mean the default). Sorted, so the first problem reported is always the same."""
    values = {}
    for name in sorted(n for n in environ if n.startswith(PREFIX)):
        setting = check_name(name)
        if environ[name].strip() == "":
            continue
        values[setting.key] = _checked(setting, environ[name], True, name, f"unset {name}")
    return values


def _read_file(path: str) -> dict[str, Any]:
    """The JSON object in the config file ``path``, unchecked."""
    import json

    try:
        with open(path) as handle:
            content = json.load(handle)
    except (OSError, ValueError) as error:
        raise SettingsError(f"{CONFIG_VARIABLE}={path!r} cannot be read as a JSON object ({error})",
                            f"point {CONFIG_VARIABLE} at a JSON file of launcher settings, or unset it") from None
    if not isinstance(content, dict):
        raise SettingsError(f"{CONFIG_VARIABLE}={path!r} holds a JSON {type(content).__name__}, not an object",
                            'write the settings as one object, e.g. {"slurm_partition": "gpu"}')
    return content


def _file_value(path: str, key: str, raw: Any) -> Any:
    """One key of the config file, checked as the environment variable is (None: null, the default)."""
    setting = SETTINGS.get(key)
    if setting is None:
        launcher_keys = sorted(repr(k) for k, s in SETTINGS.items() if s.scope == LAUNCHER)
        raise _unknown(repr(key), launcher_keys, f"a launcher setting (in {path})", f"rename or remove it in {path}")
    if setting.scope != LAUNCHER:
        raise SettingsError(f"{path!r}: {key!r} is not a launcher setting (the file holds only those)",
                            f"remove it from {path} and set {setting.variable} in the environment instead")
    return None if raw is None else _checked(setting, raw, False, f"{path!r}: {key}", f"remove {key!r} from {path}")


def _from_file(path: str) -> dict[str, Any]:
    """The launcher settings in the JSON file ``path``: key -> value (null keys left out: the default)."""
    values = {key: _file_value(path, key, raw) for key, raw in _read_file(path).items()}
    return {key: value for key, value in values.items() if value is not None}


def launcher_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every launcher setting: its default, then the config file, then ``DOMAINBED_ALIGN_<KEY>``; every
    ``DOMAINBED_ALIGN_*`` variable is checked on the way."""
    environ = os.environ if environ is None else environ
    from_environment = _environment(environ)
    values = {key: _fresh(s.default) for key, s in SETTINGS.items() if s.scope == LAUNCHER}
    if from_environment.get("launcher_config"):
        values.update(_from_file(from_environment["launcher_config"]))
    values.update({key: value for key, value in from_environment.items() if key in values})
    return values


_RAISE: Any = object()


def value(key: str, environ: Mapping[str, str] | None = None, *, fallback: Any = _RAISE) -> Any:
    """The setting ``key`` (lower case, as declared), after checking every ``DOMAINBED_ALIGN_*`` variable (and the
    config file, for a launcher setting). ``fallback``: read only this variable, and return ``fallback`` instead of
    raising when it is invalid (for code that must not fail, such as an excepthook)."""
    environ = os.environ if environ is None else environ
    setting = SETTINGS[key]  # a KeyError here is a bug in the caller: the key is not declared
    if fallback is not _RAISE:
        raw = environ.get(setting.variable, "")
        if raw.strip() == "":
            return _fresh(setting.default)
        try:
            return _checked(setting, raw, True, setting.variable, f"unset {setting.variable}")
        except SettingsError:
            return fallback
    if setting.scope == LAUNCHER:
        return launcher_settings(environ)[key]
    return _environment(environ).get(key, _fresh(setting.default))


class Finding:
    """One set variable (or config-file key) as the doctor reports it: its value, or the error."""

    __slots__ = ("name", "setting", "parsed", "error")

    def __init__(self, name: str, setting: Setting | None, parsed: Any, error: SettingsError | None) -> None:
        self.name, self.setting, self.parsed, self.error = name, setting, parsed, error


def findings(environ: Mapping[str, str] | None = None) -> list[Finding]:
    """Every ``DOMAINBED_ALIGN_*`` variable in ``environ`` and every key of the config file, each checked on its
    own (all problems, not just the first)."""
    environ = os.environ if environ is None else environ
    found = []
    for name in sorted(n for n in environ if n.startswith(PREFIX)):
        try:
            setting = check_name(name)
            parsed = _environment({name: environ[name]}).get(setting.key, setting.default)
            found.append(Finding(name, setting, parsed, None))
        except SettingsError as error:
            found.append(Finding(name, SETTINGS.get(name[len(PREFIX):].lower()), None, error))
    config = next((f for f in found if f.name == CONFIG_VARIABLE and f.error is None), None)
    if config is not None and config.parsed:
        path = config.parsed
        try:
            content = _read_file(path)
        except SettingsError as error:
            return found + [Finding(path, SETTINGS["launcher_config"], None, error)]
        for key, raw in content.items():  # each key on its own, so that every bad key is named
            name = f"{path}: {key}"
            try:
                found.append(Finding(name, SETTINGS.get(key), _file_value(path, key, raw), None))
            except SettingsError as error:
                found.append(Finding(name, SETTINGS.get(key), None, error))
    return found


def describe() -> str:
    """Every setting, one block each (``python -m domainbed_align.settings``)."""
    lines = []
    for scope, title in ((LAUNCHER, "launcher settings (environment, or the JSON file named by "
                                    f"{CONFIG_VARIABLE}, lower-case keys)"),
                         (GENERAL, "package settings (environment only)"),
                         (TEST, "test-suite switches (environment only; for tests/ and .ci/run)")):
        lines.append(f"# {title}")
        for setting in (s for s in SETTINGS.values() if s.scope == scope):
            lines.append(f"{setting.variable}  ({setting.key}; {setting.expected()}; default "
                         f"{_describe_default(setting)})\n    {setting.doc}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
