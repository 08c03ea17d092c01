"""Copied as ``sitecustomize.py`` into the root of the extracted cloudpickle suite.

cloudpickle's ``testutils._make_cwd_env`` starts child processes with ``PYTHONPATH`` set to the
extracted root and its ``tests`` folder (whatever it was before), so a ``sitecustomize`` in that
root is the one hook every child process, and every child of a child, runs. It puts the folders
named in ``CLOUDFLOW_PEER_PATH`` (this shim's folder, ``_cloudpickle_testpkg``) on ``sys.path`` --
environment variables survive ``_make_cwd_env``, which copies ``os.environ`` -- and routes the
suite's pickling through cloudflow (:func:`cloudflow_peer.install`). Does nothing without
``CLOUDFLOW_PEER_PATH``, so the plain-cloudpickle baseline run is untouched.
"""

import os
import sys

_paths = [p for p in os.environ.get("CLOUDFLOW_PEER_PATH", "").split(os.pathsep) if p]
for _path in _paths:
    if _path not in sys.path:
        sys.path.append(_path)
if _paths:
    import cloudflow_peer

    cloudflow_peer.install()
