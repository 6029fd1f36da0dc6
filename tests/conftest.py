"""Fixtures shared by the suite: the tiny-model cache, the shared Ray head and the in-process
reference dataset, a local S3 server (moto) with fake credentials, and buckets.

    def test_x(s3_config, s3_bucket, s3_client): ...   # S3Config for pipeline code, a fresh
                                                       # bucket, a boto3 client for checks
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

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
def reference_prompts(tmp_path_factory) -> Path:
    """The 6 prompts of the reference dataset (row 3 empty: rejected)."""
    from test_generate import write_prompts

    return write_prompts(tmp_path_factory.mktemp("reference") / "p6.parquet",
                         ["a red fox", "a blue car", "a green tree", "", "a cat on a mat", "a yellow boat"])


@pytest.fixture(scope="session")
def reference(reference_prompts) -> Path:
    """The uninterrupted dataset of `reference_prompts` (tiny SDXL, 3 shards of test_generate's config),
    made in this process by ShardWorker: no Ray, no actor processes to start. Every Ray run of the same
    config must reproduce its tars byte for byte. (A test that starts a job first may ask for it with
    `request.getfixturevalue` while the job's processes start.)"""
    from test_generate import make_cfg

    from pipeline.driver.plan import prepare
    from pipeline.worker import ShardWorker

    out = reference_prompts.parent / "out"
    p = prepare(make_cfg(reference_prompts, out))
    w = ShardWorker(p.cfg, name="inproc")
    for spec in p.specs:
        w.run(spec)
    return out


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


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Which tests use Ray, and their run order. The Ray tests are marked `xdist_group`: under pytest-xdist
    (pyproject's addopts: `-n 2 --dist loadgroup`) they run on one worker, beside the other worker's tests
    (tests/schedule.py says why, and when the other worker helps with the last ones), in this order: the
    test that starts a Ray of its own (`ray_private`, before this process starts the shared head), the
    tests that drive the shared head from other processes (`ray_head`: `ray job submit`, the demo's CLI),
    those that add a node to that head for their run (the two-node tests), then the other tests on the
    shared head, `slow` ones first. The last are tests the other worker may take over on a head of its
    own, so both workers end together (a pinned test last would leave the other worker idle). A Ray start
    costs seconds of CPU on the 2-core CI VM and an idle Ray still takes CPU from the tests beside it, so
    the suite starts few Ray heads."""
    shared = {"ray_local", "efficiency_report", "ray_head"}

    def place(item) -> tuple[tuple[int, int], str | None]:
        """Its sort key and its xdist_group: "ray" for a test on the shared head, which may also run on the
        other worker's own head at the end; "ray_pinned" for one that must run where this order puts it."""
        if "node_cluster" in item.fixturenames:
            return (1, 1), "ray_pinned"
        if item.get_closest_marker("ray_private"):
            return (-2, 0), "ray_pinned"  # first of all, with or without xdist
        if "ray_head" in item.fixturenames:
            return (1, 0), "ray_pinned"
        if item.get_closest_marker("ray") or shared & set(item.fixturenames):
            return (2, 0 if item.get_closest_marker("slow") else 1), "ray"
        return (-1, 0), None

    for item in items:
        if (name := place(item)[1]) is not None:
            item.add_marker(pytest.mark.xdist_group(name))
    items.sort(key=lambda item: place(item)[0])  # stable: within a group, file order


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    """Collection imports torch, diffusers, transformers and the test modules: ~0.5 M objects that live as
    long as the process. They are made with the cyclic garbage collector paused, then frozen out of its
    sight, as a sampler actor does (pipeline/driver/actors.py `outside_gc`): no full collection walks them
    again, during the tests or in the five that pytest runs when the session ends."""
    from pipeline.driver.actors import outside_gc

    with outside_gc():
        return (yield)


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist's own choice for the --dist name
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` (pyproject's addopts) means tests/schedule.py's RayOnOneWorker here."""
    if config.getvalue("dist") == "loadgroup":
        from schedule import RayOnOneWorker

        return RayOnOneWorker(config, log)
    return None


@pytest.fixture(scope="session", autouse=True)
def ray_token(tmp_path_factory) -> str:
    """Every Ray the suite starts or joins runs with token authentication, as the README's cluster path
    does: the token lives in `<ray home>/.ray/auth_token` and RAY_AUTH_MODE/RAY_AUTH_TOKEN_PATH point every
    process at it (tests/raycluster.py `use_token`). The user's ~/.ray is never read or written."""
    return raycluster.use_token(tmp_path_factory.mktemp("ray-home"))


@pytest.fixture(scope="session")
def ray_head() -> raycluster.Head:
    """The suite's shared Ray head (tests/raycluster.py), this process connected to it."""
    head = raycluster.shared_head(dashboard=True)
    raycluster.connect(head.address)
    return head


@pytest.fixture
def node_cluster(ray_head):
    """The shared head's cluster with one more node (1 CPU): two nodes for the tests that spread over,
    remove and add nodes. Adding a node to the running head is one raylet start (and its dashboard
    agent); a second cluster would be a whole second Ray start (the CI run of 3c918f1 failed exactly
    there). The node tests run one after another (see the order above) and share the node they find;
    after the last of them the extra nodes are removed (`pytest_runtest_teardown` below)."""
    cluster = ray_head.cluster
    if not cluster.worker_nodes:
        raycluster.add_node(cluster)
    return cluster


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After the last node test in a row (and its fixtures' teardown, even a failed one), the head is
    alone again before the next test starts: no later actor is placed on a node that is about to go."""
    try:
        return (yield)
    finally:
        head = raycluster.running_head()  # None once the session's last teardown stopped it
        if head is not None and "node_cluster" in item.fixturenames and (
                nextitem is None or "node_cluster" not in nextitem.fixturenames):
            raycluster.remove_worker_nodes(head.cluster)


@pytest.fixture(scope="session", autouse=True)
def _ray_down_at_exit():
    yield
    raycluster.stop_shared_head()
