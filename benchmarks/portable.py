"""What a portable bundle costs: save time and size with extra Python versions, against none.

A generated user package (``--modules`` modules of ``--functions`` functions each, one predict
function reaching all of them) is saved with ``save_bundle`` as usual (the baseline), then with
``python_versions`` listing every other CPython found on this machine (one at a time, then all).
Each save is timed ``--repeat`` times (median); the table gives ratios against the baseline.

    python benchmarks/portable.py
    python benchmarks/portable.py --modules 40 --functions 25 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import cloudflow  # noqa: E402
from cloudflow.capture import portable  # noqa: E402


def write_package(root: Path, modules: int, functions: int) -> None:
    package = root / "benchpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for m in range(modules):
        body = [f"FACTOR = {m + 1}\n"]
        for f in range(functions):
            body.append(
                textwrap.dedent(
                    f'''
                    def f{f}(x):
                        """Step {f} of module {m}."""
                        values = [v * FACTOR + {f} for v in x]
                        return [v for v in values if v % 7 != 3] or values
                    '''
                )
            )
        calls = " + ".join(f"sum(f{f}(x))" for f in range(functions))
        body.append(f"\ndef total(x):\n    return {calls}\n")
        (package / f"m{m}.py").write_text("".join(body))
    imports = "\n".join(f"from benchpkg import m{m}" for m in range(modules))
    calls = " + ".join(f"m{m}.total(x)" for m in range(modules))
    (package / "main.py").write_text(f"{imports}\n\n\ndef predict(model, x):\n    return {calls}\n")


def bundle_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=20)
    parser.add_argument("--functions", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    found = portable.find_interpreters()
    here = portable.version_of()
    others = [v for v in found if v != here]
    print(f"Python {here}; other CPythons found: {', '.join(others) or 'none'}")
    print(f"package: {args.modules} modules x {args.functions} functions; median of {args.repeat}")
    variants: list[tuple[str, list[str] | None]] = [("baseline (this Python only)", None)]
    variants += [(f"+ {v}", [v]) for v in others]
    if len(others) > 1:
        variants.append((f"+ {', '.join(others)}", others))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_package(root, args.modules, args.functions)
        sys.path.insert(0, str(root))
        from benchpkg import main as bench_main

        expected = bench_main.predict(None, list(range(50)))
        rows = []
        for label, versions in variants:
            times, size = [], 0
            for i in range(args.repeat):
                path = root / f"bundle-{len(rows)}-{i}"
                started = time.perf_counter()
                cloudflow.save_bundle(
                    bench_main.predict, {"model": {}}, path, python_versions=versions
                )
                times.append(time.perf_counter() - started)
                size = bundle_size(path)
            loaded = cloudflow.load_bundle(path)
            assert loaded.predict(x=list(range(50))) == expected
            rows.append((label, statistics.median(times), size))

    base_time, base_size = rows[0][1], rows[0][2]
    print()
    print(f"| {'save':<28} | {'time s':>7} | {'x base':>6} | {'size KB':>8} | {'x base':>6} |")
    print(f"|{'-' * 30}|{'-' * 9}|{'-' * 8}|{'-' * 10}|{'-' * 8}|")
    for label, seconds, size in rows:
        print(
            f"| {label:<28} | {seconds:7.3f} | {seconds / base_time:6.2f} | "
            f"{size / 1e3:8.1f} | {size / base_size:6.2f} |"
        )


if __name__ == "__main__":
    main()
