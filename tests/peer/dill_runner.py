"""Run one file of dill's suite imported as a module: each ``test_*`` function is one case.

``python dill_runner.py tests.test_functions result.json``, with the extracted suite's root on
``sys.path`` (its ``sitecustomize`` has routed dill through :mod:`dill_peer` already). Being
imported rather than run as ``__main__``, the file's functions and classes belong to a module
outside site-packages: cloudflow captures them by value, as it captures a project's modules.
Writes ``{case: "passed" | "failed: <traceback>"}``; a file that does not import is the case
``<file>::<import>``. A test that takes arguments (pytest parameters) runs as ``__main__`` only.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import traceback

import dill_peer


def _needs_arguments(function: object) -> bool:
    parameters = inspect.signature(function).parameters.values()  # type: ignore[arg-type]
    return any(p.default is p.empty and p.kind is not p.VAR_POSITIONAL for p in parameters)


def main() -> None:
    name, out = sys.argv[1], sys.argv[2]
    file = name.rpartition(".")[2] + ".py"
    results: dict[str, str] = {}
    dill_peer.CASE = f"{file}::<import>"
    try:
        module = importlib.import_module(name)
    except BaseException:
        results[dill_peer.CASE] = "failed: " + traceback.format_exc()[-3000:]
        module = None
    tests = [
        (key, value)
        for key, value in (vars(module).items() if module is not None else ())
        if key.startswith("test_")
        and inspect.isfunction(value)
        and value.__module__ == name
        and not _needs_arguments(value)  # given by pytest parameters: run as __main__ only
    ]
    for key, test in tests:
        dill_peer.CASE = f"{file}::{key}"
        try:
            test()
        except BaseException:
            results[dill_peer.CASE] = "failed: " + traceback.format_exc()[-3000:]
        else:
            results[dill_peer.CASE] = "passed"
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
