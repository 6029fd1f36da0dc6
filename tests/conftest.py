"""Fixtures shared by the suite: a local S3 server (moto) with fake credentials, and buckets.

    def test_x(s3_config, s3_bucket, s3_client): ...   # S3Config for pipeline code, a fresh
                                                       # bucket, a boto3 client for checks
"""

from __future__ import annotations

import os
import uuid

import pytest
import raycluster
from s3server import FAKE_ENV, UNSET_ENV, moto_s3

# Before anything imports ray (it reads this at import): drivers keep 127.0.0.1 addresses as they are.
os.environ.update(raycluster.LOOPBACK_ENV)

from pipeline.config import S3Config


@pytest.fixture(scope="session")
def s3_endpoint():
    """Endpoint URL of a moto S3 server for the whole session; the AWS env is faked meanwhile."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in FAKE_ENV.items():
            mp.setenv(k, v)
        for k in UNSET_ENV:
            mp.delenv(k, raising=False)
        with moto_s3() as url:
            yield url


@pytest.fixture
def s3_config(s3_endpoint) -> S3Config:
    return S3Config(endpoint_url=s3_endpoint, region=FAKE_ENV["AWS_DEFAULT_REGION"],
                    key=FAKE_ENV["AWS_ACCESS_KEY_ID"], secret=FAKE_ENV["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture
def s3_client(s3_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name=FAKE_ENV["AWS_DEFAULT_REGION"])


@pytest.fixture
def s3_bucket(s3_client) -> str:
    """A fresh, empty bucket per test."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """One cache of tiny models for the whole session; subprocesses (Ray actors) inherit it."""
    import os

    path = tmp_path_factory.mktemp("tiny-cache")
    old = os.environ.get("SYNTHGEN_CACHE")
    os.environ["SYNTHGEN_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SYNTHGEN_CACHE", None)
    else:
        os.environ["SYNTHGEN_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and Ray actors run beside the test process."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    """Run order: tests without Ray, then those on the suite's shared Ray head, then those on a
    two-node Cluster (which stop the head first). Each Ray start costs about a minute on the 2-core
    CI VM and an idle Ray still takes CPU from the tests beside it, so Ray is started as few times as
    possible and runs only while Ray tests run. Within a group the collected order is kept."""
    shared = {"ray_local", "reference", "efficiency_report", "ray_head"}

    def group(item) -> int:
        if "node_cluster" in item.fixturenames:
            return 2
        uses = item.get_closest_marker("ray") or shared & set(item.fixturenames)
        return 1 if uses else 0

    items.sort(key=group)  # stable


@pytest.fixture(scope="session")
def ray_head() -> raycluster.Head:
    """The suite's shared Ray head (tests/raycluster.py), this process connected to it."""
    head = raycluster.shared_head()
    raycluster.connect(head.address)
    return head


@pytest.fixture(scope="session")
def node_cluster():
    """A two-node ray.cluster_utils.Cluster (head + one node, 1 CPU each), this process its driver.
    The shared head is stopped first: these tests run last."""
    raycluster.stop_shared_head()
    head = raycluster.start_cluster(nodes=2)
    try:
        raycluster.connect(head.address)
        yield head.cluster
    finally:
        head.stop()


@pytest.fixture(scope="session", autouse=True)
def _ray_down_at_exit():
    yield
    raycluster.stop_shared_head()
