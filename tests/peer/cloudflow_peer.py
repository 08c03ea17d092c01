"""Route cloudpickle's test suite through cloudflow's pickler (see tests/test_peer_cloudpickle.py).

:func:`install` replaces, in the running process, ``cloudpickle.dumps``/``dump``/``loads``/``load``
and ``pickle.loads``/``load`` by wrappers that send calls made *by the suite's code* (its test
modules, ``testutils`` and the ``__main__`` scripts it starts) to
``cloudflow.capture.codewriter.dumps`` and ``cloudflow.runtime.unpickler.loads`` -- what
``save_bundle`` writes into ``code.pkl`` and what ``load_bundle`` reads from it.
Calls from anywhere else (multiprocessing, the standard library, pytest) go to the real functions:
multiprocessing passes its own messages through ``pickle.loads`` and must keep doing so.

Patching module attributes rather than the suite's files means every way the suite reaches these
functions is covered: ``pickle.loads(...)`` at call time, ``from pickle import loads`` in a child's
script, and ``testutils``'s module-level ``loads = pickle.loads`` (as long as :func:`install` runs
before the suite is imported: the pytest plugin ``peer_plugin`` does it in the pytest process, the
``sitecustomize`` the harness writes into the extracted copy does it in every child process).

cloudflow always writes protocol 5, so ``protocol=`` is dropped; any other keyword
(``buffer_callback=``, ``buffers=``) is passed on, for cloudflow to accept or refuse. When the
pickler fails, cloudflow raises a CaptureError chained to the pickler's own exception; the shim
re-raises that exception, the one the suite expects (a ValueError, say).

Modules that stand for installed libraries -- this shim, and the suite's ``_cloudpickle_testpkg``
(put on ``PYTHONPATH`` instead of being pip-installed) -- are given to cloudflow as
``exclude=[...]``: that is how a cloudflow user says "this is a library, refer to it by name", and
without it cloudflow would capture them by value as user code because they are not under
site-packages.

If ``CLOUDFLOW_PEER_LOG`` names a file, every routed call appends one line ``<pid> <kind>`` to it
so the harness can check that routing happened in the pytest process and in child processes.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any

import cloudpickle

# Library stand-ins, referred to by name rather than captured (see the module docstring).
EXCLUDE = (
    "cloudflow_peer",
    "peer_plugin",
    "sitecustomize",
    "_cloudpickle_testpkg",
    "dill_peer",
    "dill_runner",
)
LOG_ENV = "CLOUDFLOW_PEER_LOG"

_real: dict[str, Any] = {}


def _from_suite(depth: int = 2) -> bool:
    """Whether the caller of our caller is the suite's code (rather than a library)."""
    name = sys._getframe(depth).f_globals.get("__name__")
    if not isinstance(name, str):
        return False
    return name in ("__main__", "testutils", "tests") or name.startswith("tests.")


def _log(kind: str) -> None:
    """Append ``<pid> <kind>`` to the routing log, if there is one (one write: lines stay whole)."""
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {kind}\n")


def mark(text: str) -> None:
    """A line in the routing log from the pytest process (which test the lines below belong to)."""
    _log(text)


def _cloudflow_dumps(obj: Any, kwargs: dict[str, Any]) -> bytes:
    from cloudflow.capture.codewriter import dumps
    from cloudflow.exceptions import CaptureError

    kwargs.pop("protocol", None)
    _log("dumps")
    try:
        return dumps(obj, exclude=EXCLUDE, **kwargs)
    except CaptureError as e:
        # cloudflow reports a failure of the pickler as a CaptureError (a PicklingError) chained
        # to the pickler's own exception; the suite expects the latter (ValueError raised by a
        # __reduce__, RuntimeError for a multiprocessing Lock). The failure itself still happens.
        cause = e.__cause__
        if cause is None:
            raise
        raise cause.with_traceback(cause.__traceback__) from None


def _cloudflow_loads(data: Any, kwargs: dict[str, Any]) -> Any:
    from cloudflow.runtime.unpickler import loads

    # pickle.loads' defaults, passed by nobody in the suite; anything else goes on to cloudflow.
    for key, default in (("fix_imports", True), ("encoding", "ASCII"), ("errors", "strict")):
        if kwargs.get(key, default) == default:
            kwargs.pop(key, None)
    if not kwargs.get("buffers", True):
        kwargs.pop("buffers")
    _log("loads")
    return loads(bytes(data), **kwargs)


def dumps(obj: Any, protocol: int | None = None, **kwargs: Any) -> bytes:
    if not _from_suite():
        return _real["cloudpickle.dumps"](obj, protocol, **kwargs)
    return _cloudflow_dumps(obj, kwargs)


def dump(obj: Any, file: Any, protocol: int | None = None, **kwargs: Any) -> None:
    if not _from_suite():
        return _real["cloudpickle.dump"](obj, file, protocol, **kwargs)
    file.write(_cloudflow_dumps(obj, kwargs))
    return None


def loads(data: Any, /, **kwargs: Any) -> Any:
    if not _from_suite():
        return _real["pickle.loads"](data, **kwargs)
    return _cloudflow_loads(data, kwargs)


def load(file: Any, **kwargs: Any) -> Any:
    if not _from_suite():
        return _real["pickle.load"](file, **kwargs)
    return _cloudflow_loads(file.read(), kwargs)


def install() -> None:
    """Patch ``pickle`` and ``cloudpickle`` in this process (idempotent)."""
    if _real:
        return
    _real.update(
        {
            "pickle.loads": pickle.loads,
            "pickle.load": pickle.load,
            "cloudpickle.dumps": cloudpickle.dumps,
            "cloudpickle.dump": cloudpickle.dump,
        }
    )
    # Only the package's attributes: cloudpickle.cloudpickle keeps its own (the suite inspects
    # them, e.g. _whichmodule(cloudpickle.cloudpickle.dumps)), and cloudflow uses neither.
    pickle.loads = loads
    pickle.load = load
    cloudpickle.dumps = dumps
    cloudpickle.dump = dump
    cloudpickle.loads = loads
    cloudpickle.load = load


def installed() -> bool:
    return bool(_real)
