"""Bundles on a tracking server whose artifacts are in S3: the shared area is a prefix of the
bucket, written and read by the clients themselves.

moto's S3-compatible server (``python -m moto.server``, from PyPI) runs on 127.0.0.1 behind a
byte-counting proxy, and ``mlflow server --default-artifact-root s3://... --no-serve-artifacts``
records where each experiment's artifacts go. Clients reach S3 through the proxy
(``MLFLOW_S3_ENDPOINT_URL``), so every byte of weights uploaded or downloaded is counted on the
wire. moto was chosen because it is one ``pip install`` with no binary of its own and speaks the
S3 API boto3 (MLflow's S3 client) uses; its data stays in memory.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_same_predictions
from servers import S3_ENV, CountingProxy, s3_server, tracking_server_on_s3
from test_remote import CASES, EXPERIMENT, SMALL, load, save, write_project

pytestmark = pytest.mark.slow

BUCKET = "cloudflow-test"


@pytest.fixture(scope="module")
def on_s3(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("s3")
    with s3_server(root / "s3") as s3, CountingProxy(s3.url) as proxy:
        import boto3

        boto3.client("s3", endpoint_url=s3.url, **_credentials()).create_bucket(Bucket=BUCKET)
        with tracking_server_on_s3(root / "server", f"s3://{BUCKET}/mlflow", proxy.url) as server:
            env = {"MLFLOW_S3_ENDPOINT_URL": proxy.url, **S3_ENV}
            project = write_project(root / "project")
            proxy.reset()
            first = save(project, server.url, env)
            first_upload = proxy.sent
            proxy.reset()
            second = save(project, server.url, env)
            second_upload = proxy.sent
            shutil.rmtree(project)
            yield {
                "s3": s3,
                "proxy": proxy,
                "server": server,
                "env": env,
                "first": first,
                "second": second,
                "uploads": (first_upload, second_upload),
            }


def _credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


def _objects(on_s3: dict[str, Any]) -> dict[str, int]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=on_s3["s3"].url, **_credentials())
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def test_the_area_is_a_prefix_of_the_bucket_with_one_object_per_file(on_s3: dict[str, Any]) -> None:
    objects = _objects(on_s3)
    shared = {k: v for k, v in objects.items() if "/.cloudflow-blobs/" in k}
    assert len(shared) == 3, sorted(objects)  # weights, table, cloudflow's wheel
    assert all(k.startswith("mlflow/") for k in shared)
    # No bundle folder holds a large file: they are in the area only.
    assert max(v for k, v in objects.items() if "/models/" in k) < 1024 * 1024


def test_the_second_log_uploads_kilobytes_to_s3(on_s3: dict[str, Any]) -> None:
    first, second = on_s3["uploads"]
    large = sum(v for k, v in _objects(on_s3).items() if "/.cloudflow-blobs/" in k)
    assert first > large > 3_500_000
    assert second < SMALL, f"the second log sent {second} bytes to S3"


def test_loads_download_each_file_once_from_s3(on_s3: dict[str, Any], tmp_path: Path) -> None:
    proxy, cache = on_s3["proxy"], tmp_path / "cache"
    server, env = on_s3["server"], on_s3["env"]
    large = sum(v for k, v in _objects(on_s3).items() if "/.cloudflow-blobs/" in k)
    got = {}
    for name, run, way in [
        ("first", "first", "load_bundle"),
        ("again", "first", "pyfunc"),
        ("other run", "second", "seed"),
    ]:
        run_id = on_s3[run]["run_id"]
        answers, got[name] = load(
            tmp_path / name.replace(" ", "-"),
            proxy,
            cache,
            way,
            tracking_uri=server.url,
            env=env,
            uri=f"runs:/{run_id}/model",
            run_id=run_id,
            experiment=EXPERIMENT,
        )
        assert_same_predictions(answers, CASES, on_s3[run]["expected"])
    assert got["first"] > large, got
    assert got["again"] < SMALL, got
    assert got["other run"] < SMALL, got
