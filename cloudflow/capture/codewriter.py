"""Writing ``code.pkl``: the predict function, then the captured modules' globals it reaches.

The :class:`CodeWriter` pickles with a :class:`~cloudflow.capture.pickler.BundlePickler` the
:class:`~cloudflow.capture.policy.CapturePolicy` of the save guides, and reports what each
captured module carried and left out (the manifest's ``captured_globals``).
"""

from __future__ import annotations

import io
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from cloudpickle import cloudpickle as _cp

from cloudflow.capture.pickler import BundlePickler, ModuleState, OwnNames
from cloudflow.capture.policy import ALWAYS_CARRIED, CapturePolicy, carried_names
from cloudflow.exceptions import CaptureError
from cloudflow.integrity import digests as _digests


class CodeWriter:
    """Writes one bundle's ``code.pkl`` and says which globals of each module it carried."""

    def __init__(self, policy: CapturePolicy) -> None:
        self.policy = policy
        # Module -> the globals written so far.
        self.written: dict[str, set[str]] = {}

    def dump_code(self, predict_fn: Callable[..., Any], path: Path) -> None:
        """Write ``code.pkl``: the predict function, then every captured module, then ``None``."""
        with _digests.open_hashed(path) as f:  # digested as written: the seal reads nothing back
            self.write_code(predict_fn, f)

    def write_code(self, predict_fn: object, f: BinaryIO) -> None:
        """Write what :meth:`dump_code` writes into an open file.

        The predict function comes first; then, round after round until nothing new is
        reached, the globals of captured modules that saved code reaches (each round may reach
        more code, and so more names); then ``None``. What was left out goes to the manifest
        (:meth:`capture_report`), so the pickle depends only on what travels.
        """
        with self.policy.lock:
            pickler = BundlePickler(f, self.policy, owner=True)
            self._dump(pickler, predict_fn, "the predict function")
            while True:
                batch = self._pending_state(pickler)
                if not batch:
                    break
                for state in batch:
                    self._dump(pickler, state, f"module {state.module.__name__}", state)
            pickler.dump(OwnNames(*self.policy.own_names()))
            pickler.dump(None)

    def capture_report(self) -> dict[str, dict[str, Any]]:
        """Module -> the globals that travel, those left out, and why it travels whole if so.

        A module a function imports at call time that raised when imported at save is listed
        with the error instead (``not_imported``): it is not in the bundle.
        """
        policy = self.policy
        report: dict[str, dict[str, Any]] = {}
        for name, module in sorted(policy.captured.items()):
            entry: dict[str, Any] = {
                "globals": sorted(self.written.get(name, set())),
                "left_out": list(self._left_out(name, module)),
            }
            if name in policy.whole:
                entry["whole"] = policy.whole[name]
            report[name] = entry
        for name, error in sorted(policy.not_imported.items()):
            if name not in policy.captured:
                report[name] = {"not_imported": error}
        return report

    def _left_out(self, name: str, module: types.ModuleType) -> tuple[str, ...]:
        """Globals of a captured module that do not travel (its captured submodules do)."""
        left = carried_names(module) - self.written.get(name, set())
        return tuple(sorted(k for k in left if f"{name}.{k}" not in self.policy.captured))

    def _pending_state(self, pickler: BundlePickler) -> list[ModuleState]:
        policy = self.policy
        batch = []
        for name, module in sorted(policy.captured.items()):
            written = self.written.setdefault(name, set())
            carried = carried_names(module)
            if name in policy.whole:
                wanted = carried
            else:
                reached = policy.forced.get(name, set()) | ALWAYS_CARRIED
                if name in policy.as_objects:
                    reached = reached | policy.attributes
                wanted = carried & reached
            new = sorted(wanted - written)
            if new or name not in pickler.pickled:
                written.update(new)
                state = {k: module.__dict__[k] for k in new}
                for value in state.values():
                    if isinstance(value, types.ModuleType):
                        policy.reached_as_object(value)
                batch.append(ModuleState(module, state))
        return batch

    def _dump(
        self, pickler: BundlePickler, obj: object, what: str, state: ModuleState | None = None
    ) -> None:
        try:
            pickler.dump(obj)
        except CaptureError:
            raise
        except Exception as e:
            found = self._find_unpicklable(state)
            if found is None:
                raise CaptureError(
                    f"Cannot serialize {what}: {type(e).__name__}: {e}. Make the object "
                    "picklable, or keep it out of what the function reaches."
                ) from e
            module, attr, value, error = found
            kind = type(value)
            why = self.policy.whole.get(module)
            reached = (
                f"The module travels whole because {why}"
                if why
                else "Saved code reads it; create it inside the function that uses it (or at "
                "first use)"
            )
            if self.policy.wants_name(kind.__module__):
                reached += f", or give {kind.__qualname__} __getstate__ and __setstate__"
            raise CaptureError(
                f"Cannot serialize {what}: the global {module}.{attr} "
                f"({kind.__module__}.{kind.__qualname__}) cannot be pickled: {error}. "
                f"{reached}; or keep {module!r} by reference with "
                f"exclude_modules=[{module!r}] if it is installed where the bundle loads."
            ) from e

    def _find_unpicklable(self, state: ModuleState | None) -> tuple[str, str, object, str] | None:
        """The module global that cannot be pickled: (module, name, value, error); error path.

        Candidates are the globals being written when the dump failed: those of the module
        state, else the globals of the functions reached, the latest first (the failure is
        deepest in the graph, and plain values before functions, which would only repeat it).
        """
        candidates: list[tuple[str, str, object]] = []
        if state is not None:
            name = state.module.__name__
            candidates = [(name, k, v) for k, v in state.state.items()]
        else:
            for func in reversed(self.policy.reached_functions):
                module = str(func.__globals__.get("__name__"))
                for key in _cp._extract_code_globals(func.__code__):
                    if key in func.__globals__:
                        candidates.append((module, key, func.__globals__[key]))
        candidates.sort(key=lambda c: isinstance(c[2], types.FunctionType | type))
        seen: set[int] = set()
        for module, key, value in candidates:
            if id(value) in seen or self.policy.model_name(value) is not None:
                continue
            seen.add(id(value))
            try:
                BundlePickler(io.BytesIO(), self.policy, owner=True).dump(value)
            except Exception as e:
                return module, key, value, f"{type(e).__name__}: {e}"
        return None


def dumps(obj: object, **policy_options: Any) -> bytes:
    """``obj`` pickled as ``save_bundle`` writes a predict function (a bundle's ``code.pkl``)."""
    buffer = io.BytesIO()
    CodeWriter(CapturePolicy(**policy_options)).write_code(obj, buffer)
    return buffer.getvalue()
