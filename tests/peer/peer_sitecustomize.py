"""Copied as ``sitecustomize.py`` into the root of the extracted cloudpickle suite.

cloudpickle's ``testutils._make_cwd_env`` starts child processes with ``PYTHONPATH`` set to the
extracted root and its ``tests`` folder (whatever it was before), so a ``sitecustomize`` in that
root is the one hook every child process, and every child of a child, runs. It puts the folders
named in ``CLOUDFLOW_PEER_PATH`` (this shim's folder, ``_cloudpickle_testpkg``) on ``sys.path`` --
environment variables survive ``_make_cwd_env``, which copies ``os.environ`` -- and routes the
suite's pickling through cloudflow (:func:`cloudflow_peer.install`; dill's suite, run by
tests/test_peer_dill.py, names ``dill_peer`` in ``CLOUDFLOW_PEER_SHIM`` instead). Does nothing
without ``CLOUDFLOW_PEER_PATH``, so the plain baseline runs are untouched.
"""

import os
import sys

_paths = [p for p in os.environ.get("CLOUDFLOW_PEER_PATH", "").split(os.pathsep) if p]
for _path in _paths:
    if _path not in sys.path:
        sys.path.append(_path)
if _paths:
    import importlib

    # The routing module: cloudflow_peer for cloudpickle's suite, dill_peer for dill's.
    importlib.import_module(os.environ.get("CLOUDFLOW_PEER_SHIM", "cloudflow_peer")).install()
