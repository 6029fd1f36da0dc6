"""Which Ray the job runs on: the cluster it was submitted to or named, else a private local one.

Under `ray job submit` (RAY_ADDRESS is set) or with `ray.address=<addr>` the driver connects to
that cluster; with no address it joins a running local cluster if one runs on this machine, else it
starts a private single-node Ray (ray.local_num_cpus or all CPUs, no dashboard, 127.0.0.1).
`ray.address=local` always starts a private one. Code reaches the actors through the job's working
dir (ray job submit) or, when this process connects, a job-level `py_modules` entry holding the
`pipeline` package; a caller that initialised Ray itself provides the code its own way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Config, ConfigError
from pipeline.logs import debug
from pipeline.sampling.methods import needs_captioner

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the `pipeline` package, shipped to actors
FORWARD_ENV_PREFIX = "SYNTHGEN_"  # the tiny-model cache and fault-injection switches, for every actor


@dataclass
class RayContext:
    mode: str  # local (started here) | cluster | existing (already initialised by the caller)
    address: str
    runtime_env: dict[str, Any]  # per actor: forwarded env vars
    started_here: bool


def connect_ray(cfg: Config) -> RayContext:
    import ray

    started = False
    # A submitted job ships its working dir; otherwise the `pipeline` package goes to the cluster as
    # a job-level py_modules entry (Ray only uploads local dirs at job level).
    submitted = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
    job_env = None if submitted else {"py_modules": [str(PACKAGE_DIR)]}
    if ray.is_initialized():  # the caller connected (tests, notebooks): its runtime env stands
        mode = "existing"
    else:
        addr = cfg.ray.address
        if addr != "local" and (os.environ.get("RAY_ADDRESS") or addr):
            ray.init(address=None if os.environ.get("RAY_ADDRESS") else addr, runtime_env=job_env, **_quiet())
            mode = "cluster"
        elif addr is None and _join_local_cluster(job_env):  # a `ray start --head` on this machine
            mode = "cluster"
        else:
            start_private(cfg.ray.local_num_cpus, job_env)
            mode, started = "local", True
    env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIX)}
    address = ray.get_runtime_context().gcs_address
    log.info("ray: %s (%s); resources %s", mode, address, _resources(ray.cluster_resources()))
    return RayContext(mode, address, {"env_vars": env_vars} if env_vars else {}, started)


def start_private(num_cpus: int | None = None, runtime_env: dict | None = None) -> None:
    """A private single-node Ray on 127.0.0.1 (no dashboard) for this process; all CPUs by default."""
    import ray

    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
             num_cpus=num_cpus or os.cpu_count(), runtime_env=runtime_env, **_quiet())


def _join_local_cluster(job_env: dict | None) -> bool:
    """Connect to a Ray cluster running on this machine, if there is one. A GCS process is looked for
    first because ray.init(address="auto") retries a stale /tmp/ray/ray_current_cluster (left by a
    cluster that did not stop cleanly) for minutes."""
    import ray

    try:
        from ray._private.services import find_gcs_addresses  # private: fall back to trying if it moves
        if not find_gcs_addresses():
            return False
    except ImportError:
        pass
    try:
        ray.init(address="auto", runtime_env=job_env, **_quiet())
        return True
    except ConnectionError:
        return False


def _quiet() -> dict[str, int]:
    """Ray's own INFO lines ("Started a local Ray instance", package uploads) only at DEBUG."""
    return {"logging_level": logging.DEBUG if debug() else logging.WARNING}


def _resources(r: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in sorted(r.items()) if k in ("CPU", "GPU") or k.startswith("accelerator")}


def check_resources(cfg: Config, rc: RayContext) -> None:
    """A private local Ray cannot grow: refuse what it can never place. Clusters may autoscale: warn."""
    import ray

    total = ray.cluster_resources()
    problems = []
    if cfg.ray.gpus_per_worker > total.get("GPU", 0):
        problems.append(f"ray.gpus_per_worker={cfg.ray.gpus_per_worker} but the Ray cluster has "
                        f"{total.get('GPU', 0):g} GPU(s); use ray.gpus_per_worker=0 to sample on CPU")
    if needs_captioner(cfg) and cfg.captioner.workers and cfg.captioner.gpus_per_worker > total.get("GPU", 0):
        problems.append(f"captioner.gpus_per_worker={cfg.captioner.gpus_per_worker} but the Ray cluster "
                        f"has {total.get('GPU', 0):g} GPU(s)")
    if cfg.ray.cpus_per_worker > total.get("CPU", 0):
        problems.append(f"ray.cpus_per_worker={cfg.ray.cpus_per_worker} but the Ray cluster has "
                        f"{total.get('CPU', 0):g} CPU(s)")
    if problems and rc.mode == "local":
        raise ConfigError("; ".join(problems))
    for p in problems:
        log.warning("%s (waiting for the cluster to add resources)", p)
    n = cfg.ray.num_workers
    fits = min(total.get("CPU", 0) // cfg.ray.cpus_per_worker if cfg.ray.cpus_per_worker else n,
               total.get("GPU", 0) // cfg.ray.gpus_per_worker if cfg.ray.gpus_per_worker else n)
    if not problems and fits < n:
        log.warning("ray.num_workers=%d but the cluster can place %d sampler actor(s) now (%s); the rest "
                    "wait for resources", n, int(fits), _resources(total))
