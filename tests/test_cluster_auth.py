"""The README's cluster path with Ray token authentication on: `ray start --head` then `ray job submit`,
on a fresh machine (no token yet) and from another machine that only has the token.

A real `ray start --head --block` in its own HOME and temp dir on 127.0.0.1 (ports picked free), stopped
by the test through its process group. It runs before the suite's shared Ray head exists (no `ray`
marker): one Ray at a time on the CI VM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest
import raycluster

ENTRY = ["--", "python", "-c", "import ray; ray.init(); print('job-ok', ray.get(ray.remote(lambda: 6 * 7).remote()))"]


def ray(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*raycluster.ray_cli(), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_ray_start_head_and_job_submit_with_a_token(tmp_path):
    base = {**os.environ, **raycluster.LOOPBACK_ENV}
    for k in [k for k in base if k.startswith("RAY_AUTH") or k == "RAY_ADDRESS"]:
        del base[k]
    # the README: `export RAY_AUTH_MODE=token` on the head
    head_env = {**base, "HOME": str(tmp_path / "head-home"), "RAY_AUTH_MODE": "token"}
    os.makedirs(head_env["HOME"])
    # a fresh machine: no token yet; the README's `ray get-auth-token --generate` makes one
    assert ray("get-auth-token", env=head_env).returncode != 0
    assert ray("get-auth-token", "--generate", env=head_env).returncode == 0
    token = ray("get-auth-token", env=head_env).stdout.strip()
    assert len(token) >= 32
    port, dashboard = raycluster.free_port(), raycluster.free_port()
    log = tmp_path / "head.log"  # a file, not a pipe: nobody has to drain it
    temp = tempfile.mkdtemp(prefix="rayauth-")  # short: Ray's socket paths must fit in 107 bytes
    head = subprocess.Popen([*raycluster.ray_cli(), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                             "--num-cpus", "1", "--temp-dir", temp],
                            env=head_env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        while True:  # /api/gcs_healthz answers without a token
            assert head.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/api/gcs_healthz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the head's dashboard did not answer"
            time.sleep(1)
        submit = ["job", "submit", "--address", url, *ENTRY]
        # as the README used to write it (no RAY_AUTH_MODE where submit runs): refused
        refused = ray(*submit, env={k: v for k, v in head_env.items() if k != "RAY_AUTH_MODE"})
        assert refused.returncode != 0 and "Authentication required" in refused.stdout + refused.stderr
        # on the head, as the README writes it: the token comes from ~/.ray/auth_token
        on_head = ray(*submit, env=head_env)
        assert on_head.returncode == 0 and "job-ok 42" in on_head.stdout, on_head.stdout[-3000:] + on_head.stderr
        # from another machine: no token file, the token in RAY_AUTH_TOKEN
        laptop = {**base, "HOME": str(tmp_path / "laptop-home"), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        os.makedirs(laptop["HOME"])
        remote = ray(*submit, env=laptop)
        assert remote.returncode == 0 and "job-ok 42" in remote.stdout, remote.stdout[-3000:] + remote.stderr
        wrong = ray(*submit, env={**laptop, "RAY_AUTH_TOKEN": "0" * 64})
        assert wrong.returncode != 0 and "invalid" in wrong.stdout + wrong.stderr
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)  # --block: the head stops its own processes
            head.wait(timeout=60)
        except ProcessLookupError:  # it had already exited (the assertion above says why)
            pass
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)
