"""Real MLflow servers on 127.0.0.1 for tests: a tracking server and model scoring servers.

Each server is a subprocess in its own process group on a free port. Starting waits for its
health endpoint with a timeout (the failure message carries the tail of its log); stopping ends
the whole group (``mlflow server`` and ``mlflow models serve`` start uvicorn as a child), always,
also when the test fails.

A test module uses the session-wide tracking server with ``pytest_plugins = ["servers"]``; one
server then serves every module of a pytest process (each xdist worker starts its own).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import subprocess_env

STARTUP_TIMEOUT = 240.0  # mlflow server migrates its database first; CI machines are slow
STOP_TIMEOUT = 5.0  # then SIGKILL: test servers keep nothing worth a graceful stop
BIN_DIR = str(Path(sys.executable).parent)


def free_port() -> int:
    """A TCP port nobody listens on right now (the server may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A user process's environment with this interpreter's ``bin/`` first on PATH.

    ``mlflow models serve`` starts uvicorn through ``bash -c``, found on PATH.
    """
    env = subprocess_env(extra)
    env["PATH"] = os.pathsep.join([BIN_DIR, env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Server:
    """A running server: its base URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT)

    def get(self, path: str, timeout: float = 60.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post_json(self, path: str, payload: Any, timeout: float = 120.0) -> tuple[int, Any]:
        """POST ``payload`` as JSON; returns the status and the decoded JSON answer."""
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(payload).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, body.decode("utf-8", errors="replace")


def _wait_healthy(server: Server, health: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {server.process.returncode} before it was up.\n"
                f"--- log tail ---\n{server.log_tail()}"
            )
        with contextlib.suppress(OSError):
            status, _ = server.get(health, timeout=5)
            if status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(
        f"{server.url}{health} did not answer within {timeout:.0f} s.\n"
        f"--- log tail ---\n{server.log_tail()}"
    )


@contextlib.contextmanager
def running_server(
    argv_for_port: Any,
    *,
    health: str,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = STARTUP_TIMEOUT,
    attempts: int = 3,
) -> Iterator[Server]:
    """Start ``argv_for_port(port)`` on a free port, wait until ``health`` answers 200, stop it.

    A server that exits before it is up (another process took the port) is retried on a new
    port, ``attempts`` times in all.
    """
    last_error: Exception | None = None
    for _ in range(attempts):
        port = free_port()
        argv: Sequence[str] = argv_for_port(port)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            process = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else server_env(),
                cwd=str(cwd) if cwd else None,
                start_new_session=True,  # its own process group: stop() ends uvicorn too
            )
        server = Server(f"http://127.0.0.1:{port}", process, log)
        try:
            _wait_healthy(server, health, timeout)
        except RuntimeError as e:
            server.stop()
            last_error = e
            continue
        except BaseException:
            server.stop()
            raise
        try:
            yield server
        finally:
            server.stop()
        return
    raise RuntimeError(f"could not start {argv_for_port(0)[:4]}: {last_error}")


def tracking_server(root: Path) -> contextlib.AbstractContextManager[Server]:
    """``mlflow server`` with an sqlite backend and proxied artifacts, all under ``root``."""
    root.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        return [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"),
            *("--artifacts-destination", str(root / "artifacts")),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ]

    # No job runner (huey consumers for MLflow's GenAI jobs): nothing here uses it.
    env = server_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    return running_server(argv, health="/health", log=root / "server.log", env=env, cwd=root)


def model_server(
    model_uri: str,
    log: Path,
    *,
    tracking_uri: str | None = None,
) -> contextlib.AbstractContextManager[Server]:
    """``mlflow models serve -m model_uri --env-manager local`` (MLflow's scoring server)."""

    def argv(port: int) -> list[str]:
        return [
            *(sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri),
            *("--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", "1"),
        ]

    extra = {"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else None
    return running_server(argv, health="/ping", log=log, env=server_env(extra), cwd=log.parent)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One ``mlflow server`` for the session (per xdist worker); its URL is ``.url``."""
    with tracking_server(tmp_path_factory.mktemp("mlflow_server")) as server:
        yield server


# --- the small user project that the server, registry, serving, Spark and CLI tests save -----

#: A package of two modules and a module imported inside the function body, so that loading
#: depends on capture by value. The predict function returns JSON-like data (a dict of str,
#: float, int and list of str), the same through pyfunc, REST and Spark.
SHOP_SOURCE = {
    "shop/__init__.py": "",
    "shop/features.py": """
        VOWELS = set("aeiou")


        def normalize(text):
            return " ".join(str(text).lower().split())


        def vectorize(text, repeat):
            return [len(text) / 10, sum(c in VOWELS for c in text) / 5, text.count(" "), repeat]
        """,
    "shop/labels.py": """
        NAMES = ["bad", "neutral", "good"]
        """,
    "shop/predict.py": '''
        from __future__ import annotations

        from shop.features import normalize, vectorize


        def predict(mlp, settings, text: str, repeat: int = 1, tags: list[str] | None = None):
            """Label a text with the MLP; ``settings`` scales the score."""
            import torch

            from shop import labels  # imported at call time: must travel by value too

            clean = normalize(text)
            with torch.no_grad():
                out = mlp(torch.tensor([vectorize(clean, repeat)], dtype=torch.float32))[0]
            k = int(out.argmax())
            return {
                "label": labels.NAMES[k],
                "score": round(float(out[k]) * settings["scale"], 6),
                "words": len(clean.split()) * repeat,
                "tags": sorted(tags or []),
            }
        ''',
}

#: Calls of the predict function: ``repeat`` and ``tags`` are optional.
SHOP_CASES: list[dict[str, Any]] = [
    {"text": "Great food, really"},
    {"text": "not good at all", "repeat": 2},
    {"text": "ok", "tags": ["b", "a"]},
    {"text": "the service was slow", "repeat": 3, "tags": []},
]

#: Runs in a subprocess whose working directory holds the ``shop`` package; argv[1] is a JSON
#: spec {"tests_dir", "cases", "jobs": [...]}, each job {"mode": "save" | "log", "path" or
#: "tracking_uri" and "experiment", "registered_model_name", "scale", "save_kwargs"}. Emits one
#: dict per job: the expected predictions (computed before saving) and what the save returned.
SHOP_SAVER = r"""
import json, sys
spec = json.loads(sys.argv[1])
sys.path.append(spec["tests_dir"])
from models import tiny_torch_mlp
import cloudflow
from shop.predict import predict

mlp = tiny_torch_mlp()
outputs = []
for job in spec["jobs"]:
    models = {"mlp": mlp, "settings": {"scale": job.get("scale", 2.0)}}
    out = {"expected": [predict(**models, **case) for case in spec["cases"]]}
    kwargs = job.get("save_kwargs", {})
    if job["mode"] == "save":
        cloudflow.save_bundle(predict, models, job["path"], **kwargs)
    else:
        import mlflow

        out["experiment_id"] = cloudflow.prepare_env(job["tracking_uri"], job["experiment"])
        with mlflow.start_run() as run:
            info = cloudflow.log_bundle(
                predict, models, registered_model_name=job.get("registered_model_name"), **kwargs
            )
        out.update(
            run_id=run.info.run_id,
            model_uri=info.model_uri,
            registered_model_version=info.registered_model_version,
        )
    outputs.append(out)
emit(outputs)
"""


def save_shop(root: Path, *jobs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Write the shop project under ``root``, run the save ``jobs`` in one subprocess, delete it.

    Returns one dict per job: ``expected`` (one result per :data:`SHOP_CASES` case, computed
    before saving) and, when logging, ``run_id``, ``model_uri``, ``registered_model_version``.
    """
    import shutil
    import textwrap

    from helpers import TESTS_DIR, run_snippet

    source = root / "shop_source"
    for relative, text in SHOP_SOURCE.items():
        path = source / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    spec = {"tests_dir": str(TESTS_DIR), "cases": SHOP_CASES, "jobs": list(jobs)}
    try:
        return list(run_snippet(SHOP_SAVER, cwd=source, args=[json.dumps(spec)], timeout=300))
    finally:
        shutil.rmtree(source)  # from here on, the project's source cannot be imported


SHOP_EXPERIMENT = "team-shop"
SHOP_MODEL_NAME = "shop-model"


@pytest.fixture(scope="session")
def shop_on_server(mlflow_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The shop project logged twice over HTTP to :func:`mlflow_server`, both runs registered.

    Version 1 (score scale 2) has the alias ``champion``, version 2 (scale 5) none. Returns
    ``{"v1": ..., "v2": ...}``, each as :func:`save_shop` returns it.
    """
    import mlflow

    job = {
        "mode": "log",
        "tracking_uri": mlflow_server.url,
        "experiment": SHOP_EXPERIMENT,
        "registered_model_name": SHOP_MODEL_NAME,
    }
    root = tmp_path_factory.mktemp("shop_on_server")
    first, second = save_shop(root, {**job, "scale": 2.0}, {**job, "scale": 5.0})
    client = mlflow.MlflowClient(mlflow_server.url, registry_uri=mlflow_server.url)
    client.set_registered_model_alias(SHOP_MODEL_NAME, "champion", "1")
    return {"v1": first, "v2": second}


# --- a byte-counting TCP proxy ----------------------------------------------------------------


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of a server, counting the bytes in each direction.

    Clients talk to ``.url``; every byte they send (``sent``: uploads) and receive
    (``received``: downloads) crosses it, so a test measures what went over the wire, not what
    the code says it sent. :meth:`reset` zeroes the counts; :meth:`stop` (or the ``with`` block's
    end) closes it. With ``cut_after``, the proxy drops every connection and stops listening
    once that many bytes went to clients: to them the server went away mid-download.
    """

    def __init__(self, target_url: str, cut_after: int | None = None) -> None:
        import threading
        import urllib.parse

        parsed = urllib.parse.urlparse(target_url)
        self._target = (parsed.hostname or "127.0.0.1", int(parsed.port or 80))
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.sent = 0
        self.received = 0
        self._cut_after = cut_after
        self._lock = threading.Lock()
        self._closing = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.sent = self.received = 0

    def _count(self, upload: bool, n: int) -> bool:
        """Count ``n`` bytes; False once the proxy is to cut every connection."""
        with self._lock:
            if upload:
                self.sent += n
            else:
                self.received += n
            return self._cut_after is None or self.received < self._cut_after

    def _accept(self) -> None:
        import threading

        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=30)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, up), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, upload: bool) -> None:
        try:
            while chunk := source.recv(1 << 16):
                if not self._count(upload, len(chunk)):
                    self.stop()
                    return
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked in another thread
                with contextlib.suppress(OSError):
                    s.close()

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def s3_server(root: Path) -> contextlib.AbstractContextManager[Server]:
    """moto's S3-compatible server (``python -m moto.server``), data in memory, on 127.0.0.1."""
    root.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]

    return running_server(
        argv, health="/moto-api/", log=root / "s3.log", env=server_env(), cwd=root
    )


#: The credentials and region a client of :func:`s3_server` uses (moto accepts any).
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def tracking_server_on_s3(
    root: Path, bucket_uri: str, s3_url: str
) -> contextlib.AbstractContextManager[Server]:
    """``mlflow server`` whose experiments keep their artifacts in ``bucket_uri`` (S3), written
    and read by the clients themselves (``--no-serve-artifacts``), at the endpoint ``s3_url``."""
    root.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        return [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"),
            *("--default-artifact-root", bucket_uri, "--no-serve-artifacts"),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ]

    env = server_env(
        {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_S3_ENDPOINT_URL": s3_url, **S3_ENV}
    )
    return running_server(argv, health="/health", log=root / "server.log", env=env, cwd=root)
