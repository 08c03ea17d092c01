"""Route dill's test suite through another pickler (see tests/test_peer_dill.py).

:func:`install` replaces ``dumps``/``dump``/``loads``/``load``/``copy`` in ``dill`` and in
``dill._dill`` (whose ``copy``, ``pickles`` and ``check`` call them by their module globals), so
every pickle the suite makes or reads goes to the backend named by ``CLOUDFLOW_PEER_BACKEND``:

- ``cloudflow``: ``cloudflow.capture.codewriter.dumps``/``cloudflow.runtime.unpickler.loads``,
  what ``save_bundle`` writes into ``code.pkl`` and ``load_bundle`` reads back (through
  :mod:`cloudflow_peer`'s own wrappers, so
  both peer suites call cloudflow the same way);
- ``cloudpickle``: ``cloudpickle.dumps`` and ``pickle.loads``, the fair baseline for a
  cloudpickle-based tool.

dill's own keywords (``byref``, ``recurse``, ``fmode``, ``ignore``, ``protocol``) have no
meaning for either and are dropped. With ``CLOUDFLOW_PEER_DUMPS`` naming a folder, every
cloudflow dump whose in-process load succeeded is kept there with the case it belongs to
(:data:`CASE`), for a fresh interpreter to load it again where the suite's files cannot be
imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from typing import Any

import cloudflow_peer

BACKEND_ENV = "CLOUDFLOW_PEER_BACKEND"
DUMPS_ENV = "CLOUDFLOW_PEER_DUMPS"
CASE_ENV = "CLOUDFLOW_PEER_CASE"
#: The case the next dumps belong to: set by the runner, else the file run as ``__main__``.
CASE = os.environ.get(CASE_ENV, "")

_backend = ""
_done = False


def _dumps(obj: Any, *args: Any, **kwargs: Any) -> bytes:
    if _backend == "cloudpickle":
        import cloudpickle

        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return cloudflow_peer._cloudflow_dumps(obj, {})


def _loads(data: Any, *args: Any, **kwargs: Any) -> Any:
    data = bytes(data)
    if _backend == "cloudpickle":
        return pickle.loads(data)
    loaded = cloudflow_peer._cloudflow_loads(data, {})
    _keep(data)
    return loaded


def _keep(data: bytes) -> None:
    """Keep a dump that loaded here, for the fresh interpreter (one write: lines stay whole)."""
    folder = os.environ.get(DUMPS_ENV)
    if not folder:
        return
    digest = hashlib.sha256(data).hexdigest()[:24]
    path = os.path.join(folder, f"{digest}.pkl")
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(data)
    with open(os.path.join(folder, "index.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps({"case": CASE, "dump": f"{digest}.pkl"}) + "\n")


def dumps(obj: Any, protocol: Any = None, byref: Any = None, fmode: Any = None,
          recurse: Any = None, **kwds: Any) -> bytes:  # fmt: skip
    return _dumps(obj)


def dump(obj: Any, file: Any, protocol: Any = None, byref: Any = None, fmode: Any = None,
         recurse: Any = None, **kwds: Any) -> None:  # fmt: skip
    file.write(_dumps(obj))


def loads(str: Any, ignore: Any = None, **kwds: Any) -> Any:  # noqa: A002 (dill's name)
    return _loads(str)


def load(file: Any, ignore: Any = None, **kwds: Any) -> Any:
    return _loads(file.read())


def copy(obj: Any, *args: Any, **kwds: Any) -> Any:
    return _loads(_dumps(obj))


def install() -> None:
    """Patch ``dill`` in this process for the backend in the environment (idempotent)."""
    global _backend, _done
    _backend = os.environ.get(BACKEND_ENV, "")
    if _done or _backend not in ("cloudflow", "cloudpickle"):
        return
    import dill
    import dill._dill

    for module in (dill, dill._dill):
        module.dumps, module.dump = dumps, dump  # type: ignore[assignment]
        module.loads, module.load = loads, load  # type: ignore[assignment]
        module.copy = copy  # type: ignore[assignment]
    _done = True
