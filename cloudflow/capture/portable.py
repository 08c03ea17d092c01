"""Bundles that load under several CPython minor versions, still without source.

Bytecode changes with every CPython minor version, so a pickled code object only runs on the
version that wrote it. A bundle saved with ``python_versions=[...]`` therefore writes no code
object in its pickles: each function's code is a *reference* (the source file's number, the
function's qualified name, its first line, an index among equal ones), and the bundle holds one
*code table* per version, ``code-3.12.marshal``: for every reference, the code object compiled by
that version's interpreter from the source the saving process read (``linecache``, so notebook
cells work too). Compiling needs none of the user's imports, so each target interpreter runs a
small script in a subprocess; the source goes to it through a pipe and is never written.

What has no source cannot be recompiled: the methods ``dataclass`` generates are left out and
generated again at load (the class keeps its fields and parameters), and a ``namedtuple`` or
``typing.NamedTuple`` class is made again by ``collections.namedtuple`` (its name, fields,
defaults and module recorded; the methods the user wrote on it travel as references like any
other); a string annotation's ``ForwardRef`` is compiled again from its string. Any other code
without source (``exec``, ``eval``) keeps its bytecode in the saving version's table only, and
the bundle then loads on the saving version only, as the save's warning says, naming it.

This module compiles the tables at save; :mod:`cloudflow.runtime.codetables` reads one at load.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import linecache
import logging
import marshal
import os
import re
import shutil
import subprocess
import sys
import types
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cloudflow import _packages
from cloudflow.exceptions import BundleArgumentError, CaptureError
from cloudflow.runtime.codetables import version_of

_logger = logging.getLogger("cloudflow")

#: Oldest CPython minor a portable bundle can target (cloudflow's own requirement).
OLDEST = (3, 10)
COMPILE_TIMEOUT_S = 300

# Indexes the code objects nested in a module's code by a key every version computes alike. Run
# in-process and, as source, by each target interpreter: it must work on every version >= 3.10.
_INDEX = r'''
import types

_INLINED = ("<listcomp>.<locals>.", "<dictcomp>.<locals>.", "<setcomp>.<locals>.")


def index_codes(module_code):
    """Key "qualname:firstlineno:n" -> code object, for every code object nested in a module.

    Qualified names as CPython 3.11+ gives them (co_qualname), rebuilt from the nesting on 3.10;
    comprehension scopes are left out of them, since 3.12 inlines list, dict and set
    comprehensions. n counts code objects with the same name and line, in source order.
    """
    out = {}

    def walk(code, qual, in_function):
        for const in code.co_consts:
            if not isinstance(const, types.CodeType):
                continue
            name = getattr(const, "co_qualname", None)
            if name is None:
                if in_function:
                    name = qual + ".<locals>." + const.co_name
                else:
                    name = qual + "." + const.co_name if qual else const.co_name
            key_name = name
            for scope in _INLINED:
                key_name = key_name.replace(scope, "")
            n = 0
            while "%s:%d:%d" % (key_name, const.co_firstlineno, n) in out:
                n += 1
            out["%s:%d:%d" % (key_name, const.co_firstlineno, n)] = const
            walk(const, name, bool(const.co_flags & 1))  # CO_OPTIMIZED: a function's scope

    walk(module_code, "", False)
    return out


def strip_docstrings(code):
    consts = list(code.co_consts)
    for i, const in enumerate(consts):
        if isinstance(const, types.CodeType):
            consts[i] = strip_docstrings(const)
    if (
        consts
        and isinstance(consts[0], str)
        and not code.co_name.startswith("<")
        and (not hasattr(code, "co_qualname") or code.co_flags & 0x4000000 or
             __import__("sys").version_info < (3, 14))
    ):
        consts[0] = None
    return code.replace(co_consts=tuple(consts))
'''

_COMPILER = (
    _INDEX
    + r"""

import json, marshal, sys

request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
table, missing, errors = {}, [], {}
for number, (filename, source, wanted) in enumerate(request["files"]):
    try:
        index = index_codes(compile(source, filename, "exec", dont_inherit=True))
    except SyntaxError as e:
        errors[filename] = "%s: %s (line %s)" % (type(e).__name__, e.msg, e.lineno)
        continue
    for key in wanted:
        code = index.get(key)
        if code is None:
            missing.append("%d|%s" % (number, key))
        else:
            table["%d|%s" % (number, key)] = (
                strip_docstrings(code) if request["strip_docstrings"] else code
            )
# A line of JSON, then the table in this version's marshal format (which the saver cannot read).
head = json.dumps({"missing": missing, "errors": errors}).encode("utf-8")
sys.stdout.buffer.write(head + b"\n" + marshal.dumps(table))
"""
)

_namespace: dict[str, Any] = {}
exec(compile(_INDEX, "<cloudflow.capture.portable index>", "exec"), _namespace)
index_codes = _namespace["index_codes"]
_strip_tree = _namespace["strip_docstrings"]


def _minor(version: str) -> tuple[int, ...]:
    return tuple(map(int, version.split(".")))


# --- finding interpreters ------------------------------------------------------------------------


def _candidates() -> list[str]:
    """Python executables worth asking: PATH, pyenv, uv's managed Pythons, the py launcher's."""
    found: list[str] = []
    for minor in range(OLDEST[1], 30):
        exe = shutil.which(f"python3.{minor}")
        if exe:
            found.append(exe)
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]
    for root in filter(None, roots):
        found += sorted(glob.glob(os.path.join(root, "versions", "*", "bin", "python3")))
    uv_dir = os.environ.get("UV_PYTHON_INSTALL_DIR") or os.path.expanduser(
        "~/.local/share/uv/python"
    )
    found += sorted(glob.glob(os.path.join(uv_dir, "cpython-*", "bin", "python3")))
    return found


@lru_cache(maxsize=1)
def find_interpreters() -> dict[str, str]:
    """CPython minor version -> an interpreter of it on this machine (the running one first)."""
    found = {version_of(): sys.executable}
    asked: set[str] = set()
    for exe in _candidates():
        real = os.path.realpath(exe)
        if real in asked:  # PATH's python3.12 is often pyenv's: ask each interpreter once
            continue
        asked.add(real)
        try:
            out = subprocess.run(
                [
                    exe,
                    "-c",
                    "import sys, platform; print(*sys.version_info[:2], "
                    "platform.python_implementation())",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.split()
        except (OSError, subprocess.SubprocessError):
            continue
        if len(out) == 3 and out[2] == "CPython" and (int(out[0]), int(out[1])) >= OLDEST:
            found.setdefault(f"{out[0]}.{out[1]}", exe)
    return dict(sorted(found.items(), key=lambda kv: _minor(kv[0])))


def resolve_versions(python_versions: str | Iterable[str] | None) -> dict[str, str]:
    """The versions a save targets -> their interpreters (the saving one always included).

    Raises:
        BundleArgumentError: A version that is not ``"3.N"``, older than 3.10, or that has no
            interpreter on this machine; the message lists the ones found.
    """
    here = version_of()
    if python_versions is None:
        return {here: sys.executable}
    available = find_interpreters()
    if python_versions == "all":
        return available
    if isinstance(python_versions, str):
        python_versions = [python_versions]
    wanted = list(python_versions)
    for version in wanted:
        if not isinstance(version, str) or not re.fullmatch(r"3\.\d+", version):
            raise BundleArgumentError(
                f"python_versions lists {version!r}; give CPython minor versions such as "
                f"'3.12', or 'all' (found here: {sorted(available)})."
            )
        if tuple(map(int, version.split("."))) < OLDEST:
            raise BundleArgumentError(
                f"python_versions lists {version!r}; cloudflow runs on Python 3.10 and later."
            )
        if version not in available:
            raise BundleArgumentError(
                f"python_versions lists {version!r}, but no Python {version} interpreter was "
                f"found (PATH python{version}, pyenv, uv). Found: {sorted(available)}. Install "
                f"it (pyenv install {version}, uv python install {version}) or leave it out."
            )
    return {v: available[v] for v in sorted({here, *wanted}, key=_minor)}


# --- save side: references and tables ------------------------------------------------------------


@dataclass
class CodeTables:
    """The code references of one save and what the tables need to be built.

    ``key_for`` names each code object; ``build`` compiles the tables once pickling is done.
    """

    versions: dict[str, str]
    strip_docstrings: bool = False
    files: list[tuple[str, str]] = field(default_factory=list)  # (relative name, source)
    wanted: dict[int, set[str]] = field(default_factory=dict)  # file number -> keys
    native: dict[str, types.CodeType] = field(default_factory=dict)  # key -> code, this version
    not_portable: dict[str, str] = field(default_factory=dict)  # where -> why
    _numbers: dict[str, int] = field(default_factory=dict)  # co_filename -> file number
    # co_filename -> (co_name, first line) -> [(inner key, code compiled here)]
    _indexes: dict[str, dict[tuple[str, int], list[tuple[str, types.CodeType]]]] = field(
        default_factory=dict
    )

    @property
    def portable(self) -> bool:
        return len(self.versions) > 1

    def key_for(
        self, code: types.CodeType, relname: str, rewritten: types.CodeType, where: str
    ) -> str:
        """The reference of ``code`` (its rewritten form goes into this version's table)."""
        found = self._find(code, relname, f"{where} ({relname}, line {code.co_firstlineno})")
        if found is None:
            key = f"native|{len(self.native)}"
        else:
            number, inner = found
            key = f"{number}|{inner}"
            self.wanted.setdefault(number, set()).add(inner)
        self.native[key] = rewritten
        return key

    def _find(self, code: types.CodeType, relname: str, where: str) -> tuple[int, str] | None:
        filename = code.co_filename
        if filename not in self._indexes:
            lines = linecache.getlines(filename) if filename else []
            if not lines:
                self._indexes[filename] = {}
            else:
                source = "".join(lines)
                try:
                    index = index_codes(compile(source, relname, "exec", dont_inherit=True))
                except SyntaxError:
                    index = {}
                by_line: dict[tuple[str, int], list[tuple[str, types.CodeType]]] = {}
                for inner, compiled in index.items():
                    key = (compiled.co_name, compiled.co_firstlineno)
                    by_line.setdefault(key, []).append((inner, compiled))
                self._indexes[filename] = by_line
                if index:
                    self._numbers[filename] = len(self.files)
                    self.files.append((relname, source))
        by_line = self._indexes[filename]
        if not by_line:
            self.not_portable[where] = "its code has no source file (exec, eval or generated)"
            return None
        for inner, candidate in by_line.get((code.co_name, code.co_firstlineno), ()):
            if _same_code(code, candidate):
                return self._numbers[filename], inner
        self.not_portable[where] = "its source file changed since it was imported"
        return None

    def build(self) -> tuple[dict[str, bytes], list[str]]:
        """Compile the tables: version -> marshal bytes, and the versions the bundle loads on."""
        here = version_of()
        tables = {here: marshal.dumps(self.native)}
        if not self.portable:
            return tables, [here]
        if self.not_portable:
            reasons = "; ".join(f"{w}: {why}" for w, why in sorted(self.not_portable.items()))
            warn(
                f"The bundle is saved for Python {here} only: code that cannot be recompiled "
                f"keeps it from loading on other versions ({reasons}). Define such functions "
                "with `def` in a module of yours."
            )
            return tables, [here]
        request = {
            "files": [
                [name, source, sorted(self.wanted.get(i, ()))]
                for i, (name, source) in enumerate(self.files)
            ],
            "strip_docstrings": self.strip_docstrings,
        }
        others = {v: exe for v, exe in self.versions.items() if v != here}
        loads_on = [here]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(others)) as pool:
            jobs = {v: pool.submit(_compile_with, exe, v, request) for v, exe in others.items()}
            for version, job in jobs.items():
                result = job.result()
                problems = [f"{f}: {e}" for f, e in sorted(result["errors"].items())]
                problems += [f"{k.partition('|')[2]} not found" for k in result["missing"]]
                if problems:
                    warn(
                        f"Python {version} cannot compile the code of this bundle "
                        f"({'; '.join(problems[:5])}); it will not load there."
                    )
                    continue
                tables[version] = result["table"]
                loads_on.append(version)
        return tables, sorted(loads_on, key=_minor)


def warn(message: str) -> None:
    _logger.warning(message)
    warnings.warn(message, UserWarning, stacklevel=2)


def _same_code(live: types.CodeType, compiled: types.CodeType) -> bool:
    """Whether fresh compiled source is the code that runs (the file may have been edited)."""
    if (
        live.co_code != compiled.co_code
        or live.co_names != compiled.co_names
        or live.co_varnames != compiled.co_varnames
        or live.co_freevars != compiled.co_freevars
        or live.co_cellvars != compiled.co_cellvars
        or len(live.co_consts) != len(compiled.co_consts)
    ):
        return False
    for a, b in zip(live.co_consts, compiled.co_consts, strict=True):
        if isinstance(a, types.CodeType):
            if not isinstance(b, types.CodeType) or not _same_code(a, b):
                return False
        elif type(a) is not type(b) or a != b:
            return False
    return True


def _compile_with(exe: str, version: str, request: Mapping[str, Any]) -> dict[str, Any]:
    # -I: isolated (no user site, no PYTHONPATH, no cwd on sys.path): compile imports nothing.
    try:
        done = subprocess.run(
            [exe, "-I", "-c", _COMPILER],
            input=json.dumps(request).encode("utf-8"),
            capture_output=True,
            timeout=COMPILE_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise CaptureError(f"Cannot run Python {version} ({exe}) to compile the code: {e}") from e
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise CaptureError(
            f"Python {version} ({exe}) failed to compile the code: " + " | ".join(tail)
        )
    head, _, table = done.stdout.partition(b"\n")
    result: dict[str, Any] = json.loads(head)
    result["table"] = table
    return result


# --- requirements --------------------------------------------------------------------------------


def requirement_lines(dist: str, version: str, versions: Iterable[str]) -> tuple[list[str], str]:
    """``dist==version`` as requirement lines that install on each of ``versions``.

    A release whose ``Requires-Python`` (read from the installed distribution) leaves out some of
    the versions is pinned under a marker for the others, and named without a version for the
    ones it leaves out (pip picks a release that supports them there): ``numpy==2.4.6;
    python_version != "3.10"`` and ``numpy; python_version == "3.10"``. The second value says
    which versions were left out and why ("" when none were).
    """
    pinned = f"{dist}=={version}"
    requires = _packages.distribution_field(dist, "Requires-Python")
    if requires is None:
        return [pinned], ""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        spec = SpecifierSet(requires)
    except InvalidSpecifier:
        return [pinned], ""
    # A high patch number: "3.10" stands for its newest release (">=3.10.1" admits it).
    left_out = [v for v in versions if not spec.contains(f"{v}.99", prereleases=True)]
    if not left_out:
        return [pinned], ""
    elsewhere = " and ".join(f'python_version != "{v}"' for v in left_out)
    there = " or ".join(f'python_version == "{v}"' for v in left_out)
    why = f"{dist} {version} needs Python {requires}, so not {', '.join(left_out)}"
    return [f"{pinned}; {elsewhere}", f"{dist}; {there}"], why


def python_env_note(versions: list[str]) -> str:
    """The comment heading python_env.yaml of a bundle that loads on several versions.

    MLflow's python_env.yaml has room for one version (``python:``, the saving one, kept so
    that ``mlflow models serve`` builds what was tested); the comment says where the others are.
    """
    return (
        f"# cloudflow: this bundle loads on Python {', '.join(versions)} (one code table each;\n"
        "# MLmodel's cloudflow section lists them as python_versions). `python` is the version\n"
        "# that saved it. requirements.txt installs on each listed version: a pinned release that\n"
        "# does not support one is pinned under an environment marker for the others.\n"
    )
