"""When a loading bundle's files are read ahead and hashed against its manifest.

:class:`DigestPlan` is the one policy: which files are hashed before anything is unpickled,
which on another core while the models load, which as a signed model's private folder is
filled, and which only when a lazy model loads.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cloudflow.exceptions import IntegrityError
from cloudflow.integrity import digests as _digests
from cloudflow.integrity import manifest as _manifest
from cloudflow.integrity import sealed as _sealed
from cloudflow.integrity.manifest import Manifest
from cloudflow.runtime.bundle import IN_PREDICT

_logger = logging.getLogger("cloudflow")

#: Hashes files beside a load (weights while the models load, a lazy model's during a predict).
VERIFIER = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="cloudflow")


@dataclass(frozen=True)
class DigestPlan:
    """When each file of a bundle is hashed, for one load.

    Nothing is hashed when the load is unchecked (``verify=False`` and no key). Otherwise:

    - **now**, before anything is unpickled: pickles (loading them runs code) and every file
      none of the rules below names;
    - **beside the load** (:attr:`deferred`): weights in a format parsed without running code
      (safetensors: :func:`~cloudflow.integrity.manifest.deferred_files`) of models loaded at once,
      hashed on another core while the models load. Unsigned, the first predict gives its
      answer only once they match (``Bundle.predict``); signed, the load returns only then. Not
      when ``defer`` is off: a folder put together in the cache is checked whole before the load
      returns, so a damaged one is put together again at once;
    - **sealed** (:attr:`sealed`), under a key: a model's files (but pickles) are checked as they
      are copied into the private folder the model loads from (:mod:`cloudflow.integrity.sealed`),
      not by name beforehand;
    - **at first use** (:attr:`later`), for lazily loaded models: when the model loads. Under a
      key, as sealed; unsigned and loaded by a predict call, its data-only weights are hashed
      while that call runs (the call's answer waits for them); else before it loads.
    """

    checked: bool
    signed: bool
    deferred: tuple[str, ...]
    deferrable: frozenset[str]
    sealed: frozenset[str]
    later: frozenset[str]
    by_model: dict[str, list[str]]

    @classmethod
    def for_load(
        cls, manifest: Manifest, *, checked: bool, signed: bool, lazy: bool, defer: bool
    ) -> DigestPlan:
        """The plan for a load: ``checked`` (verify or a key), ``signed`` (a key), ``lazy``
        models, ``defer`` (off for a folder put together in the cache)."""
        deferrable = set(_manifest.deferred_files(manifest)) if checked and defer else set()
        sealed = (
            {r for e in manifest.models.values() for r in _sealed.sealed_files(manifest, e.path)}
            if signed
            else set()
        )
        deferrable -= sealed
        by_model = {
            name: [r for r in manifest.files if r.startswith(entry.path.rstrip("/") + "/")]
            for name, entry in manifest.models.items()
        }
        later = {r for rels in by_model.values() for r in rels} if lazy else set()
        return cls(
            checked=checked,
            signed=signed,
            deferred=tuple(sorted(deferrable - later)),
            deferrable=frozenset(deferrable),
            sealed=frozenset(sealed),
            later=frozenset(later),
            by_model=by_model,
        )

    def read_ahead(self, manifest: Manifest) -> list[str]:
        """The files to read ahead now: all but the lazy models'."""
        return [r for r in manifest.files if r not in self.later]

    def not_now(self) -> list[str]:
        """The files whose digests the check before the load skips."""
        return [*self.deferred, *self.later, *self.sealed]

    def model_check(
        self, data: Path, manifest: Manifest, late: list[concurrent.futures.Future[None]]
    ) -> Callable[[str], None]:
        """What a lazy model runs before it loads: its files checked (see the class doc).

        The hashing of weights started during a predict call is appended to ``late``.
        """

        def check_model(name: str) -> None:
            if not self.checked or self.signed:  # under a key: checked as sealed, when it loads
                return
            rels = [r for r in self.by_model[name] if not r.endswith(_manifest.READ_ONCE_SUFFIXES)]
            if IN_PREDICT.get():
                # Loaded by a predict call of an unsigned bundle: its data-only files are hashed
                # while that call runs, and Bundle.predict gives its answer only once they match.
                weights = self.deferrable.intersection(rels)
                rels = [r for r in rels if r not in weights]
                if weights:
                    future = VERIFIER.submit(
                        _manifest.verify_digests, data, manifest, sorted(weights), use_cache=True
                    )
                    future.add_done_callback(functools.partial(report_damage, data.parent))
                    late.append(future)
            _manifest.verify_digests(data, manifest, rels, use_cache=True)

        return check_model


def report_damage(where: Path, verifying: concurrent.futures.Future[None]) -> None:
    """Say at once, not only at the first predict, that a file checked after the load is bad."""
    error = None if verifying.cancelled() else verifying.exception()
    if error is not None:
        _logger.error("Bundle %s is damaged; its predict will refuse to answer: %s", where, error)


def prefetch(data: Path, rels: Iterable[str]) -> None:
    """Ask the kernel to read a bundle's files ahead (``posix_fadvise(WILLNEED)``), all at once.

    A first load on a machine reads its files from the disk; the kernel then reads them in the
    background while the verification and the models work, instead of on demand, one page
    fault or read at a time. Costs a few system calls; a no-op where the call does not exist.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    for rel in rels:
        try:
            # A regular file only, opened without blocking (a FIFO in a file's place must not
            # wait for a writer; the verification that follows refuses it).
            fd = _digests.open_regular(data / rel)
        except (OSError, IntegrityError):
            continue
        try:
            advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)
