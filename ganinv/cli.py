"""What train.py and invert.py share on the command line: bad input as one line, not a traceback.

- :func:`one_line_errors` turns the errors a user can fix (:data:`USER_ERRORS`, a write refused by
  the disk, a config key the target does not take) into ``<prog>: <message>`` on stderr and exit
  status 2; real bugs keep their traceback.
- :func:`check_config` reads every ``_target_`` node of the composed config against its target's
  signature before anything is built, so an unknown key or a wrong type (``trainer.max_steps=abc``)
  is one line naming the key instead of a failure deep inside Lightning an hour later.
- :func:`main` runs a ``@hydra.main`` function so that Hydra's own reports of a config it cannot
  compose (unknown group option, unknown key, unparsable override) are one line and exit 2 too, and
  so that in a multirun (``-m``) a failing job is reported and the other jobs still run; the exit
  status is non-zero when any job failed and the last line says how many.
"""
import contextlib
import errno
import inspect
import os
import re
import sys
import traceback
import typing
from types import NoneType, UnionType

from hydra.errors import HydraException, InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException


class ConfigError(ValueError):
    """A config value the target cannot take (unknown key, wrong type); the message names the key."""


class OneLineExit(SystemExit):
    """Exit status 2 after ``<prog>: <message>`` was printed; ``message`` is kept for a multirun
    summary (a SystemExit, so Hydra's job runner does not swallow it as a job failure)."""

    def __init__(self, message):
        super().__init__(2)
        self.message = message


# Bad input the user can fix: reported as one line naming the file or field, not as a traceback
# (with ganinv's NonFiniteLossError and Lightning's MisconfigurationException, see _user_error_types).
USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, ImportError,
               MissingMandatoryValue)
# OS errors that mean "this disk or folder will not take the file": the user frees space or picks
# another folder. Other OSErrors (EIO, ...) keep their traceback.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _user_error_types():
    """USER_ERRORS plus a non-finite loss (ganinv's guard) and Lightning's MisconfigurationException
    (e.g. a Trainer argument Lightning refuses), each only when its module is already imported: an
    error cannot be of a class that was never loaded, and reporting a Hydra composition error then
    imports neither torch nor Lightning."""
    guards = sys.modules.get("ganinv.methods.guards")
    lightning = sys.modules.get("lightning_fabric.utilities.exceptions")
    return (*USER_ERRORS, *([guards.NonFiniteLossError] if guards else []),
            *([lightning.MisconfigurationException] if lightning else []))


def _first_line(text, default):
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), default)


@contextlib.contextmanager
def writing(path):
    """Re-raise an OSError of writing ``path`` (e.g. ENOSPC from a temporary file next to it) with
    ``path`` as its file name, so the one-line report names the file the user knows."""
    try:
        yield
    except OSError as e:
        if e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e


def user_error(exc):
    """The one-line message of an error the user can fix, else None: one of USER_ERRORS, Lightning's
    MisconfigurationException, an OSError in WRITE_ERRNOS (named by its file), also when wrapped by
    Hydra's ``instantiate``, whose config key then leads the message."""
    key = None
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        text = str(exc)
        found = re.search(r"^full_key: (\S+)", text, re.M)
        key = found.group(1) if found else key
        if text.startswith("Error locating target") and isinstance(exc.__cause__, ImportError):
            text = text.split(",")[0]  # "Error locating target 'module.Name'"; the rest says HYDRA_FULL_ERROR
            return f"{key}: {text}" if key else text
        exc = exc.__cause__
    if isinstance(exc, _user_error_types()):
        text = _first_line(exc, type(exc).__name__)
    elif isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        what = exc.strerror or os.strerror(exc.errno)
        verb = "cannot access" if exc.errno in (errno.EACCES, errno.EPERM) else "cannot write"  # also reads
        text = f"{verb} {exc.filename}: {what}" if exc.filename else what
    else:
        return None
    return f"{key}: {text}" if key else text


def config_error(exc):
    """One line for Hydra's or OmegaConf's report of a config it cannot compose (unknown group option,
    unknown key, unparsable override), else None. Hydra prints these over several lines (options one
    per line, search path, a HYDRA_FULL_ERROR hint); this keeps the message and the options."""
    if not isinstance(exc, (HydraException, OmegaConfBaseException)):
        return None
    lines = str(exc).splitlines()
    if isinstance(exc.__cause__, OmegaConfBaseException):
        lines += str(exc.__cause__).splitlines()
    parts = []
    for line in lines:
        if line.startswith(("Config search path:", "Set the environment variable HYDRA_FULL_ERROR")):
            break
        text = line.strip()
        if not text or text.startswith(("full_key:", "object_type=", "reference_type=", "See https://")):
            continue
        if line.startswith("\t") and parts:  # an option listed under "Available options in 'group':"
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + text
        else:
            parts.append(text.rstrip("."))
    message = "; ".join(parts) or type(exc).__name__
    key = getattr(exc, "override", None) or getattr(exc.__cause__, "full_key", None) \
        or getattr(exc, "full_key", None)
    return f"{key}: {message}" if key and not message.startswith(f"{key}:") else message


@contextlib.contextmanager
def one_line_errors(prog):
    """Report expected bad-input errors (:func:`user_error`) as ``<prog>: <message>`` on stderr with
    exit status 2 (:class:`OneLineExit`); anything else keeps its traceback, as does everything with
    HYDRA_FULL_ERROR=1."""
    try:
        yield
    except Exception as e:
        message = user_error(e)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{prog}: {message}", file=sys.stderr)
        raise OneLineExit(message) from None


# -- config values against their targets ---------------------------------------------------------

_SIMPLE = (bool, int, float, str, NoneType)


def _fits(value, kind):
    """Whether a config value fits the simple type ``kind`` (int for float is fine, bool is not a number)."""
    if kind is NoneType:
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _expected(param, hints):
    """The simple types a parameter takes (from its annotation; else a number or bool from its
    default), or None when that cannot be told plainly (any other annotation: no check)."""
    hint = hints.get(param.name, inspect.Parameter.empty)
    if hint is not inspect.Parameter.empty:
        kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, UnionType) else (hint,)
        return kinds if all(k in _SIMPLE for k in kinds) else None
    default = param.default
    if isinstance(default, bool):
        return (bool, NoneType)
    if isinstance(default, (int, float)):
        return (float, NoneType)  # an int default often takes floats too (a loss weight of 0)
    return None


def _type_name(kinds):
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", NoneType: "null"}
    return " or ".join(names[k] for k in kinds)


def _signature(target):
    """``(parameters by name, type hints, takes any keyword)`` of a config target. A ganinv class whose
    ``__init__`` passes ``**kwargs`` on (``PSP(generator, encoder, **kwargs)``) is followed up its ganinv
    bases, so that a key none of them takes is caught; other ``**kwargs`` take anything."""
    params, hints = {}, {}
    chain = [c for c in inspect.getmro(target) if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    for obj in chain:
        function = vars(obj)["__init__"] if inspect.isclass(obj) else obj
        try:
            found = inspect.signature(function).parameters
        except (TypeError, ValueError):  # a builtin without a signature
            return params, hints, True
        try:
            hints = {**typing.get_type_hints(function), **hints}
        except Exception:
            pass
        params = {**{n: p for n, p in found.items() if n != "self"
                     and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}, **params}
        if not any(p.kind is p.VAR_KEYWORD for p in found.values()):
            return params, hints, False
        if not (inspect.isclass(obj) and obj.__module__.startswith("ganinv.")):
            return params, hints, True
    return params, hints, True


def _check_node(node, key):
    """Check one ``_target_`` node's keys against the target's signature (nodes below it are walked
    by :func:`check_config`)."""
    from hydra.utils import get_object

    try:
        target = get_object(str(node._target_))
    except Exception:  # an unknown target: instantiate reports it as "Error locating target"
        return
    params, hints, takes_any = _signature(target)
    for name in node:
        if str(name).startswith("_"):
            continue
        where = f"{key}.{name}" if key else str(name)
        if name not in params and not takes_any:
            raise ConfigError(f"{where}: unknown key: {node._target_} takes no argument '{name}'")
        param = params.get(name)
        if param is None or OmegaConf.is_missing(node, name):
            continue
        try:
            value = node[name]
        except Exception:  # an interpolation that does not resolve: instantiate names it
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            continue
        kinds = _expected(param, hints)
        if kinds is not None and not any(_fits(value, k) for k in kinds):
            # a plain ${key} names the key the user set: "seed: ... (as inversion.seed)"
            source = re.fullmatch(r"\$\{([\w.]+)\}", str(node._get_node(name)._value()))
            named = f"{source.group(1)}: expected {_type_name(kinds)}, got {value!r} (as {where})" if source \
                else f"{where}: expected {_type_name(kinds)}, got {value!r}"
            raise ConfigError(named)


def check_config(cfg, scalars=None, key=""):
    """Raise ConfigError naming the first key that its target cannot take: a key the target's
    signature lacks, a value that does not fit its annotation (or a number/bool default), a
    top-level ``scalars`` entry (``{"seed": int}``) of the wrong type. Checked before anything is
    built, so the message comes at once."""
    for name, kind in (scalars or {}).items():
        value = OmegaConf.select(cfg, name, throw_on_missing=False)
        if not _fits(value, kind):
            raise ConfigError(f"{name}: expected {_type_name((kind,))}, got {value!r}")
    if isinstance(cfg, DictConfig):
        if "_target_" in cfg:
            _check_node(cfg, key)
        children = [(k, cfg._get_node(k)) for k in cfg]
    elif isinstance(cfg, ListConfig):
        children = [(i, cfg._get_node(i)) for i in range(len(cfg))]
    else:
        return
    for name, child in children:
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none() and not child._is_missing():
            check_config(child, key=f"{key}.{name}" if key else str(name))


# -- the entry point ------------------------------------------------------------------------------

class _Run:
    """What one process's Hydra run saw: each multirun job's overrides and failure message, and the
    exception that escaped a task (a real bug, left to Hydra's report)."""

    def __init__(self):
        self.jobs, self.failures, self.task_error, self.bug = [], {}, None, False


_RUN = _Run()


def _multirun():
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job(prog, task, cfg, scalars=None):
    """Run ``task(cfg)`` as one Hydra job after :func:`check_config`. In a multirun a failure is
    reported and recorded (the sweep goes on; :func:`main` sums up), else a user error exits 2."""
    from hydra.core.hydra_config import HydraConfig

    multirun = _multirun()
    if multirun:
        num = HydraConfig.get().job.num
        _RUN.jobs.append(list(HydraConfig.get().overrides.task))
    try:
        with one_line_errors(prog):
            check_config(cfg, scalars)
        return task(cfg)
    except OneLineExit as e:  # already printed
        if not multirun:
            raise
        _RUN.failures[num] = e.message
    except Exception as e:
        if not multirun:
            _RUN.task_error = e  # a bug: Hydra prints its traceback
            raise
        traceback.print_exc()
        _RUN.failures[num] = f"{type(e).__name__}: {_first_line(e, '')}"
        _RUN.bug = True
    return None


def _summary():
    """``N of M multirun jobs failed: #i (overrides that differ between jobs): message; ...``."""
    common = set.intersection(*(set(j) for j in _RUN.jobs)) if _RUN.jobs else set()
    parts = []
    for num, message in sorted(_RUN.failures.items()):
        own = " ".join(o for o in _RUN.jobs[num] if o not in common) if num < len(_RUN.jobs) else ""
        parts.append(f"#{num}{f' ({own})' if own else ''}: {message}")
    return f"{len(_RUN.failures)} of {len(_RUN.jobs)} multirun jobs failed: " + "; ".join(parts)


def main(prog, hydra_main):
    """Call a ``@hydra.main`` function (whose body calls :func:`job`) with Hydra's composition errors
    as one line and exit status 2, then, after a multirun with failed jobs, print the summary line
    and exit 2 (1 when a job failed with a bug, whose traceback was printed).

    Hydra prints a config it cannot compose over several lines and exits 1 from inside
    ``hydra._internal.utils.run_and_report``, which has no hook; while ``hydra_main`` runs that
    function is wrapped so such errors become ``<prog>: <message>``. HYDRA_FULL_ERROR=1 keeps
    Hydra's own behaviour (the exception is raised)."""
    from hydra._internal import utils as hydra_utils

    original = hydra_utils.run_and_report

    def run_and_report(func):
        def guarded():
            try:
                return func()
            except Exception as e:
                message = None if e is _RUN.task_error else config_error(e) or user_error(e)
                if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"{prog}: {message}", file=sys.stderr)
                raise OneLineExit(message) from None
        return original(guarded)

    hydra_utils.run_and_report = run_and_report
    try:
        hydra_main()
    finally:
        hydra_utils.run_and_report = original
    if _RUN.failures:
        print(f"{prog}: {_summary()}", file=sys.stderr)
        sys.exit(1 if _RUN.bug else 2)
