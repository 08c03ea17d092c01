"""Exceptions raised by cloudflow.

Every error cloudflow raises on purpose derives from :class:`CloudflowError`, and each subclass
also inherits the builtin exception a caller would already catch for that kind of mistake::

    CloudflowError
    ├── BundleArgumentError (TypeError)        a save argument of the wrong kind or shape
    ├── ModelKeyError (KeyError)               a model name that is not a parameter of predict_fn
    ├── PredictArgumentError (TypeError)       unknown or missing parameters at predict time
    ├── CaptureError (pickle.PicklingError)    the predict function or a model cannot be saved
    ├── LeftOutGlobalError (AttributeError)    a module global no saved code reached was read
    ├── ModuleNotInBundleError (ModuleNotFoundError)  a module of the user's the bundle lacks
    ├── StoreError (RuntimeError)              a tracking store cannot be used
    │   ├── NotFoundError (LookupError)        no such experiment, run, model or bundle
    │   └── CacheError                         the download cache cannot be used (full, shared)
    ├── BundleFormatError (ValueError)         not a bundle, or a newer format
    │   └── IntegrityError (ValueError)        a file changed, removed or added after saving
    ├── EnvironmentMismatchError (RuntimeError) the bundle needs another Python to unpickle
    └── MissingDependencyError (ImportError)   a flavor's library is not installed
"""

from __future__ import annotations

import pickle

__all__ = [
    "BundleArgumentError",
    "BundleFormatError",
    "CacheError",
    "CaptureError",
    "CloudflowError",
    "DataFileError",
    "EnvironmentMismatchError",
    "IntegrityError",
    "LeftOutGlobalError",
    "MissingDependencyError",
    "ModelKeyError",
    "NotFoundError",
    "PredictArgumentError",
    "StoreError",
]


class CloudflowError(Exception):
    """Root of every error cloudflow raises on purpose."""


class BundleArgumentError(CloudflowError, TypeError):
    """An argument given to a save or load call is of the wrong kind or shape."""


class ModelKeyError(CloudflowError, KeyError):
    """A key of ``models`` does not name a parameter of the predict function."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class PredictArgumentError(CloudflowError, TypeError):
    """``predict`` was called with unknown parameters or without a required one."""


class CaptureError(CloudflowError, pickle.PicklingError):
    """The predict function, a module it reaches, or a model cannot be serialized."""


class LeftOutGlobalError(CloudflowError, AttributeError):
    """Code of a loaded bundle read a module global that was left out when it was saved.

    A bundle carries the globals of each captured module that the saved code reaches; one read
    in a way the bytecode does not show (a name computed at run time) was not saved.
    """


class ModuleNotInBundleError(CloudflowError, ModuleNotFoundError):
    """Code of a loaded bundle imported a module of the user's that the bundle does not hold.

    Names that were the user's modules where the bundle was saved belong to the bundle: the
    loading program's module of the same name is never used in their place.
    """


class DataFileError(CloudflowError, FileNotFoundError):
    """Code of a loaded bundle asked for a data file the bundle does not hold (``files=``)."""


class StoreError(CloudflowError, RuntimeError):
    """A tracking store cannot be used (not writable, not reachable, wrong kind of URI)."""


class NotFoundError(StoreError, LookupError):
    """An experiment, run, registered model or bundle does not exist."""


class CacheError(StoreError):
    """The per-machine cache of downloaded files cannot be used: full, or writable by others."""


class BundleFormatError(CloudflowError, ValueError):
    """A path is not a cloudflow bundle, or was written by a newer format version."""


class IntegrityError(BundleFormatError):
    """A bundle's files do not match its manifest: changed, missing, extra, or wrongly signed."""


class EnvironmentMismatchError(CloudflowError, RuntimeError):
    """The bundle was saved under a Python whose pickled bytecode this interpreter cannot run."""


class MissingDependencyError(CloudflowError, ImportError):
    """A library needed to load one of the bundle's models is not installed."""
