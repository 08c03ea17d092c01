"""Metadata users attach to each model of a bundle: free JSON values and a training history.

``model_metadata={"classifier": {"dataset": "iris-v3", "training_history": {"loss": [0.9, 0.5,
0.3], "val_accuracy": [0.7, 0.8, 0.9]}}}`` on :func:`cloudflow.save_bundle`,
:func:`cloudflow.log_bundle` and the seed API's ``save``. Each key names a model of ``models``;
its value is a dict of JSON values, checked before anything is written. ``training_history`` is
the one reserved key: metric name -> one number per epoch.

Where it goes: the manifest's ``model_metadata`` (an optional key: an older cloudflow keeps it
among the manifest's extras and loads the bundle as before), ``Bundle.model_metadata`` at load,
``cloudflow inspect``, and, for :func:`cloudflow.log_bundle`, the run: short tags
(``cloudflow.<name>.<model>.meta.<key>``; for each history metric its final value and the
number of epochs) and the history itself as run metrics, one step per epoch
(``cloudflow.<name>.<model>.<metric>``), so MLflow's charts draw it. Those metric keys never
collide with the metrics a training loop logs itself.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

_logger = logging.getLogger("cloudflow")

#: The reserved key: metric name -> a list of numbers, one per epoch.
HISTORY = "training_history"
#: At most this many keys of a model's metadata become run tags (the manifest keeps them all).
TAGS_PER_MODEL = 50
_METRICS_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_TAG_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")  # what MLflow allows in a tag or metric key


# --- run tags and metrics --------------------------------------------------------------------


def _key_part(text: str) -> str:
    return _TAG_KEY_CHARS.sub("_", text)


def tags(
    model_metadata: Mapping[str, Mapping[str, Any]], prefix: str, short: Any
) -> dict[str, str]:
    """Run tags of each model's metadata: ``<prefix>.<model>.meta.<key>`` and, per history
    metric, ``<prefix>.<model>.history.<metric>`` (its final value) and ``.epochs``."""
    out: dict[str, str] = {}
    for model, entry in model_metadata.items():
        base = f"{prefix}.{_key_part(model)}"
        plain = [(k, v) for k, v in entry.items() if k != HISTORY]
        for key, value in plain[:TAGS_PER_MODEL]:
            out[f"{base}.meta.{_key_part(key)}"] = short(value)
        history = entry.get(HISTORY) or {}
        for metric, values in history.items():
            if values:
                out[f"{base}.history.{_key_part(metric)}"] = short(values[-1])
        if history:
            out[f"{base}.history.epochs"] = str(max(len(v) for v in history.values()))
    return out


def log_history_metrics(
    client: Any, run_id: str, model_metadata: Mapping[str, Mapping[str, Any]], name: str
) -> None:
    """Log each ``training_history`` as run metrics, step = epoch; a failure is only logged."""
    try:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(f"cloudflow.{name}.{_key_part(model)}.{_key_part(metric)}", float(v), now, step)
            for model, entry in model_metadata.items()
            for metric, values in (entry.get(HISTORY) or {}).items()
            for step, v in enumerate(values)
        ]
        for start in range(0, len(metrics), _METRICS_BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + _METRICS_BATCH])
    except Exception as e:
        _logger.warning("Could not log the training history of run %s as metrics: %s", run_id, e)
