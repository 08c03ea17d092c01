"""Measuring in clean processes: the load worker, its forked children, and what they measure.

A worker is a fresh interpreter (``bench.py --worker``) that imports the libraries once, then
forks one child per job: every load starts with the libraries imported and nothing loaded, like
a service that just started. A job is a JSON line; the child answers with one JSON line. The
child measures the load, the first predict, its peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs``) and the bytes it wrote (``/proc/self/io``). ``--no-fork`` starts a
new worker per job instead. :func:`run_fresh` runs a job in a new interpreter that imports
nothing beforehand (``bench.py --fresh-job``), for what the first calls of a process cost.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import workload

from cfbench import BENCH_SCRIPT, REPO
from cfbench.models import SIZES, SPECS, make_inputs, summarize
from cfbench.strategies import STRATEGIES

DIGEST_CACHE_ENV = "CLOUDFLOW_CACHE_DIR"
FRAMEWORKS = ("torch", "transformers", "sklearn", "tensorflow", "jax", "keras", "onnx")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync() -> None:
    """Write dirty pages out between steps, so one save's writeback is not timed in the next."""
    with contextlib.suppress(AttributeError, OSError):
        os.sync()


def preimport() -> float:
    """Import what any strategy's load uses, so the loads compare loading, not importing."""
    import importlib
    import pkgutil

    start = time.perf_counter()
    for name in (
        "numpy",
        "torch",
        "safetensors.torch",
        "transformers",
        "transformers.pipelines",
        "transformers.models.bert.modeling_bert",
        "transformers.models.bert.tokenization_bert",
        "tokenizers",
        "sklearn.ensemble",
        "sklearn.tree",
        "cloudpickle",
        "mlflow",
        "mlflow.pyfunc",
        "mlflow.transformers",
        "mlflow.pytorch",
        "mlflow.sklearn",
        "mlflow.store.tracking.sqlalchemy_store",
        "skops.io",
        "tests.models",
    ):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    import transformers

    for attr in ("pipeline", "AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification"):
        getattr(transformers, attr)
    try:
        import cloudflow
    except ImportError:
        pass
    else:
        for info in pkgutil.walk_packages(cloudflow.__path__, "cloudflow."):
            with contextlib.suppress(Exception):
                importlib.import_module(info.name)
    return time.perf_counter() - start


def _reset_peak_rss() -> None:
    """Set the peak RSS to the current RSS (Linux: 5 > /proc/self/clear_refs), so the peak of the
    load is measured even when the process was larger before (e.g. while importing)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _maxrss_mb() -> float:
    """Peak RSS: VmHWM (which the reset above moves), else getrusage's ru_maxrss."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _io_written() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def job_load(job: dict[str, Any]) -> dict[str, Any]:
    import gc

    sizes = SIZES[job["sizes"]]
    spec = SPECS[job["spec"]]
    strategy = STRATEGIES[job["strategy"]]
    inputs = make_inputs(sizes)
    # cloudflow remembers file digests in a cache folder: each load names its own (a fresh one
    # is a machine that never loaded this bundle), never the user's ~/.cache.
    if job.get("digest_cache"):
        os.environ[DIGEST_CACHE_ENV] = job["digest_cache"]
    connect = getattr(strategy, "connect", None)
    connect_s = None
    if connect is not None:
        t = time.perf_counter()
        connect(job["handle"])
        connect_s = time.perf_counter() - t
    if job.get("evict"):
        evict_page_cache(Path(job["evict"]))
    gc.collect()
    _reset_peak_rss()
    rss0, io0 = _maxrss_mb(), _io_written()
    t0 = time.perf_counter()
    loaded = strategy.load(job["handle"], spec, sizes)
    t1 = time.perf_counter()
    rss1, io1 = _maxrss_mb(), _io_written()
    out = strategy.predict(loaded, spec, inputs)
    t2 = time.perf_counter()
    rss2 = _maxrss_mb()
    return {
        "load_s": t1 - t0,
        "first_predict_s": t2 - t1,
        "connect_s": connect_s,
        "load_rss_mb": rss1 - rss0,
        "peak_rss_mb": rss2 - rss0,
        "written_mb": (io1 - io0) / 2**20,
        "output": summarize(spec, out),
    }


def evict_page_cache(location: Path) -> None:
    """Drop the page cache of the saved files (only those), so the load reads them from disk."""
    os.sync()  # dirty pages cannot be dropped
    files = [location] if location.is_file() else [
        Path(root) / f for root, _dirs, names in os.walk(location) for f in names
    ]  # fmt: skip
    for path in files:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def job_overhead(job: dict[str, Any]) -> dict[str, Any]:
    """Per-call cost of Bundle.predict (and of MLflow's pyfunc predict) over a direct call."""
    import mlflow.pyfunc

    import cloudflow

    n = job["calls"]
    bundle = cloudflow.load_bundle(job["path"])
    model = bundle.models["model"]
    direct = workload.predict_noop
    pyfunc = mlflow.pyfunc.load_model(job["path"])

    def per_call(call: Callable[[], Any], calls: int, batch: int = 100) -> float:
        times = []
        for _ in range(max(1, calls // batch)):
            t = time.perf_counter_ns()
            for _ in range(batch):
                call()
            times.append((time.perf_counter_ns() - t) / batch / 1000)
        return statistics.median(times)

    assert bundle.predict(x=1) == 1
    assert direct(model=model, x=1) == 1
    per_call(lambda: bundle.predict(x=1), 1000)  # warm up
    direct_us = per_call(lambda: direct(model=model, x=1), n)
    bundle_us = per_call(lambda: bundle.predict(x=1), n)
    pyfunc_us = per_call(lambda: pyfunc.predict({"x": 1}), max(100, n // 20), batch=10)
    return {
        "direct_us": direct_us,
        "bundle_us": bundle_us,
        "overhead_us": bundle_us - direct_us,
        "pyfunc_us": pyfunc_us,
    }


def job_profile(job: dict[str, Any]) -> dict[str, Any]:
    """Profile of one load (empty digest cache); see :func:`profiled`."""
    sizes = SIZES[job["sizes"]]
    spec = SPECS[job["spec"]]
    strategy = STRATEGIES[job["strategy"]]
    os.environ[DIGEST_CACHE_ENV] = job["digest_cache"]
    connect = getattr(strategy, "connect", None)
    if connect is not None:
        connect(job["handle"])
    return {"profile": profiled(lambda: strategy.load(job["handle"], spec, sizes), job["top"])}


#: The benchmark's own files on a profiled stack, left out of the profiles (their wrappers are
#: on every stack).
OWN_FILES = ("bench.py:", "cli.py:", "measure.py:", "runner.py:", "strategies.py:")


class Sampler:
    """Wall-clock sampling profiler of every thread (cProfile sees only the calling one).

    Every ``interval`` seconds it records which functions are on each thread's stack; a
    function's share of samples is its share of wall time (waits on I/O or locks included).
    """

    def __init__(self, interval: float = 0.002) -> None:
        import threading

        self.interval = interval
        self.samples = 0
        self.total: dict[str, int] = {}
        self.own: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import threading

        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            self.samples += 1
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                seen: set[str] = set()
                leaf = True
                f: Any = frame
                while f is not None:
                    code = f.f_code
                    name = f"{Path(code.co_filename).name}:{code.co_firstlineno}({code.co_name})"
                    if leaf:
                        self.own[name] = self.own.get(name, 0) + 1
                        leaf = False
                    if name not in seen:
                        seen.add(name)
                        self.total[name] = self.total.get(name, 0) + 1
                    f = f.f_back

    def __enter__(self) -> Sampler:
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.wall = time.perf_counter() - self._start

    def text(self, top: int) -> str:
        per = self.wall / max(1, self.samples)
        lines = [
            f"wall {self.wall:.3f} s, {self.samples} samples; seconds on the stack (all "
            "threads; a thread's time counts for each function it is in), own = at the top"
        ]
        lines.append(f"{'cumulative s':>12} {'own s':>7}  function")
        # The benchmark's own wrappers and thread plumbing are on every stack: leave them out.
        skip = (*OWN_FILES, "threading.py:")
        ranked = sorted(
            ((n, c) for n, c in self.total.items() if not n.startswith(skip)), key=lambda kv: -kv[1]
        )[:top]
        for name, count in ranked:
            lines.append(f"{count * per:12.3f} {self.own.get(name, 0) * per:7.3f}  {name}")
        return "\n".join(lines)  # fmt: skip


def profiled(call: Callable[[], Any], top: int) -> str:
    """Sampling profile (all threads) and cProfile's top entries (calling thread) of a call."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    with Sampler() as sampler:
        profiler.enable()
        call()
        profiler.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer).strip_dirs().sort_stats("cumulative")
    stats.print_stats(top)
    return sampler.text(top) + "\n\ncProfile (calling thread only):" + buffer.getvalue()


JOBS = {"load": job_load, "overhead": job_overhead, "profile": job_profile}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"ok": True, **JOBS[job["kind"]](job)}
    except BaseException:
        return {"ok": False, "error": traceback.format_exc()}


def worker_main(fork: bool) -> None:
    """Worker loop: one JSON job a line on stdin, one '@@RESULT <json>' line back on stdout."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to the log, never into the protocol
    sys.stdout = sys.stderr
    import_s = preimport()
    import gc

    gc.collect()
    gc.freeze()  # what the imports allocated is never collected: the children's gc stays cheap
    protocol.write("@@READY " + json.dumps({"import_s": import_s}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        result = _run_forked(job) if fork else run_job(job)
        protocol.write("@@RESULT " + json.dumps(result) + "\n")
        _clear(Path(tempfile.gettempdir()))


def fresh_main(line: str) -> None:
    """One job in this interpreter, which imported nothing for it: '@@RESULT <json>' on stdout."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    protocol.write("@@RESULT " + json.dumps(run_job(json.loads(line))) + "\n")


def run_fresh(job: dict[str, Any], tmp: Path, timeout: float = 900) -> dict[str, Any]:
    """Run a job in a new interpreter (``bench.py --fresh-job``) and return its result."""
    log_file = tmp / "fresh.log"
    with open(log_file, "a") as err:
        proc = subprocess.run(
            [sys.executable, str(BENCH_SCRIPT), "--fresh-job", json.dumps(job)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=child_env(),
            cwd=str(tmp),
            timeout=timeout,
        )
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT "):
            return json.loads(line[len("@@RESULT ") :])
    return {"ok": False, "error": f"exit status {proc.returncode}; its log:\n{tail(log_file)}"}


def _run_forked(job: dict[str, Any]) -> dict[str, Any]:
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        payload = json.dumps(run_job(job)).encode()
        with os.fdopen(write_fd, "wb") as f:
            f.write(payload)
        sys.stderr.flush()
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    _pid, status = os.waitpid(pid, 0)
    if not data:
        return {"ok": False, "error": f"load process died (wait status {status})"}
    return json.loads(data)


def _clear(folder: Path) -> None:
    """Empty the worker's temp folder (MLflow's runs:/ loads download into it)."""
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


class Worker:
    """A fresh interpreter that has imported the libraries and runs load jobs.

    With ``fork`` (the default) one worker serves every job, forking a child per load; without,
    every job gets a new worker (and pays the imports again, outside the timed load).
    """

    def __init__(self, tmp: Path, fork: bool) -> None:
        self.tmp = tmp
        self.fork = fork
        self.log = tmp / "worker.log"
        self.scratch = tmp / "worker-tmp"
        self.scratch.mkdir(exist_ok=True)
        self.proc: subprocess.Popen[str] | None = None
        self.import_s: float | None = None
        self._start()

    def _start(self) -> None:
        env = child_env()
        env["TMPDIR"] = str(self.scratch)
        command = [sys.executable, str(BENCH_SCRIPT), "--worker"]
        if not self.fork:
            command.append("--no-fork")
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                cwd=str(self.tmp),
            )
        self.ready = False

    def wait_ready(self) -> None:
        if not self.ready:
            self.import_s = float(self._read("@@READY ")["import_s"])
            self.ready = True

    def _read(self, marker: str) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(marker):
                return json.loads(line[len(marker) :])
        raise RuntimeError(f"the load worker stopped; its log:\n{tail(self.log)}")

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        if self.proc is None:
            self._start()
        self.wait_ready()
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        result = self._read("@@RESULT ")
        if not self.fork:
            self.close()
        return result

    def close(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=120)
            self.proc = None


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


# --------------------------------------------------------------------------------------------
# Machine, versions, import time


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gb = None
    with contextlib.suppress(OSError, StopIteration):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
        ram_gb = round(kb / 2**20, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": ram_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("mlflow", "torch", "transformers", "scikit-learn", "skops", "safetensors",
                 "cloudpickle", "numpy"):  # fmt: skip
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    try:
        from cloudflow._version import __version__
    except ImportError:
        out["cloudflow"] = None
    else:
        out["cloudflow"] = __version__
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    out["cloudflow commit"] = commit
    return out


def cloudflow_available() -> bool:
    probe = "import cloudflow; cloudflow.log_bundle; cloudflow.load_bundle; cloudflow.save_bundle"
    return (
        subprocess.run(
            [sys.executable, "-c", probe], env=child_env(), capture_output=True
        ).returncode
        == 0
    )


def import_times(repeat: int) -> dict[str, Any]:
    """Wall time of `python -c "import X"` in fresh interpreters (median), and what it imports."""
    env = child_env()

    def wall(code: str) -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    out: dict[str, Any] = {"python -c pass": wall("pass"), "import mlflow": wall("import mlflow")}
    try:
        out["import cloudflow"] = wall("import cloudflow")
    except subprocess.CalledProcessError:
        out["import cloudflow"] = None
        return out
    probe = (
        "import json, sys, cloudflow; "
        f"print(json.dumps(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True
    )
    out["frameworks imported by import cloudflow"] = json.loads(result.stdout.splitlines()[-1])
    probe = "import json, sys, cloudflow; print(json.dumps('mlflow' in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True
    )
    out["import cloudflow imports mlflow"] = json.loads(result.stdout.splitlines()[-1])
    return out
