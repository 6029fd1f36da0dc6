"""Fixtures shared by the suite: the tiny-model cache, the shared Ray head and the in-process
reference dataset, a local S3 server (moto) with fake credentials, and buckets.

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


# ------------------------------------------------------------------ tiny models and the shared Ray
# (defined once here: a session fixture imported into several test modules runs once per module)
@pytest.fixture(scope="session", autouse=True)
def synthgen_cache(tmp_path_factory):
    """One tiny-model cache for the whole run (SYNTHGEN_CACHE, also seen by subprocesses and Ray actors),
    shared by the pytest-xdist workers (tiny models are built under a lock and published atomically:
    pipeline/models/tiny.py `build_once`), never the user's ~/.cache."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "synthgen-cache"
    path.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYNTHGEN_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_cache(synthgen_cache):
    """The session's tiny-model cache (the name the model tests use)."""
    return synthgen_cache


@pytest.fixture
def ray_local(synthgen_cache):
    """The suite's shared Ray head, this process its driver, FakeWorker shipped by value."""
    pytest.importorskip("ray")
    from test_generate import ensure_test_ray

    return ensure_test_ray()


@pytest.fixture(scope="session")
def reference(synthgen_cache, tmp_path_factory):
    """The uninterrupted dataset (tiny SDXL, 6 rows, 3 shards of test_generate's config), made in
    this process by ShardWorker: no Ray, no actor processes to start. Every Ray run of the same
    config (tests/test_generate.py, tests/test_chaos.py) must reproduce its tars byte for byte."""
    from test_generate import make_cfg, write_prompts

    from pipeline.driver.plan import prepare
    from pipeline.worker import ShardWorker

    d = tmp_path_factory.mktemp("reference")
    prompts = write_prompts(d / "p6.parquet", ["a red fox", "a blue car", "a green tree", "",
                                               "a cat on a mat", "a yellow boat"])
    out = d / "out"
    p = prepare(make_cfg(prompts, out))
    w = ShardWorker(p.cfg, name="inproc")
    for spec in p.specs:
        w.run(spec)
    return prompts, out


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


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and Ray actors run beside the test process."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    """Run order: the test that starts a Ray of its own (`ray_private`, before this process starts the
    shared head), then the tests that drive the shared head from other processes (`ray_head`: `ray job
    submit`, the demo's CLI), then the tests without Ray, then the other tests on the shared head, then
    those that add a node to that head (the two-node tests). A Ray start costs seconds of CPU on the 2-core
    CI VM and an idle Ray still takes CPU from the tests beside it, so a process starts Ray as few times as
    possible and never two at once.

    Under pytest-xdist (pyproject's addopts: `-n 2 --dist load`) each worker takes tests in this order and
    starts its own shared head when its first Ray test comes (tests/raycluster.py gives the two heads
    separate ports and temp dirs), so at most two heads run at a time. Measured on the 2-core machine,
    `--dist load` beat two fixed groups (`loadgroup`: 342 s against 309 s): work stealing evens out the
    tail that fixed groups cannot. The `ray_head` tests spend most of their wall time waiting on Ray's job
    and actor startup: first, they run beside the other worker's CPU-bound tests instead of beside other
    Ray tests that wait too (217.9 s against 220-227 s). Among the other tests on the shared head the
    `slow` ones go first: the long runs start early and the short ones even out the end of both workers."""
    shared = {"ray_local", "efficiency_report", "ray_head"}

    def group(item) -> tuple[int, int]:
        if "node_cluster" in item.fixturenames:
            return 3, 0
        if item.get_closest_marker("ray_private"):
            return -1, 0
        if "ray_head" in item.fixturenames:
            return -1, 1
        if item.get_closest_marker("ray") or shared & set(item.fixturenames):
            return 2, 0 if item.get_closest_marker("slow") else 1
        return 0, 0

    items.sort(key=group)  # stable


@pytest.fixture(scope="session", autouse=True)
def ray_token(tmp_path_factory) -> str:
    """Every Ray the suite starts or joins runs with token authentication, as the README's cluster path
    does: the token lives in `<ray home>/.ray/auth_token` and RAY_AUTH_MODE/RAY_AUTH_TOKEN_PATH point every
    process at it (tests/raycluster.py `use_token`). The user's ~/.ray is never read or written."""
    return raycluster.use_token(tmp_path_factory.mktemp("ray-home"))


@pytest.fixture(scope="session")
def ray_head() -> raycluster.Head:
    """The suite's shared Ray head (tests/raycluster.py), this process connected to it."""
    head = raycluster.shared_head()
    raycluster.connect(head.address)
    return head


@pytest.fixture(scope="session")
def node_cluster(ray_head):
    """The shared head's cluster with one more node (1 CPU): two nodes for the tests that spread
    over, remove and add nodes. Adding a node to the running head is one raylet start; a second
    cluster would be a whole second Ray start (the CI run of 3c918f1 failed exactly there). These
    tests run last (see the ordering above), so the extra nodes disturb no other test."""
    cluster = ray_head.cluster
    raycluster.add_node(cluster)
    try:
        yield cluster
    finally:
        for node in list(cluster.worker_nodes):
            cluster.remove_node(node)


@pytest.fixture(scope="session", autouse=True)
def _ray_down_at_exit():
    yield
    raycluster.stop_shared_head()
