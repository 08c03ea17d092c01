"""TRANSITIONAL: signature inference lives in :mod:`cloudflow.capture.signature`."""

from cloudflow.capture.signature import resolve_signature  # transitional: capture.signature

__all__ = ["resolve_signature"]
