"""The README's cluster path with Ray token authentication on: `ray get-auth-token --generate` on a fresh
machine, then `ray job submit` to a head that runs with a token, from the head (token file) and from
another machine that only has the token.

The head is the suite's shared one (tests/raycluster.py: the Node that `ray start --head` runs, with
RAY_AUTH_MODE=token and its token in `<ray home>/.ray/auth_token`, conftest's `ray_token`); a head of
its own would be a second Ray start (about a minute of the suite on the 2-core CI VM). Jobs run with
the interpreter of the tests, never `python` from PATH (a venv that is not activated lacks ray there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import raycluster

ENTRY = ["--", sys.executable, "-c",
         "import ray; ray.init(); print('job-ok', ray.get(ray.remote(lambda: 6 * 7).remote()))"]


def ray(*args: str, env: dict) -> subprocess.Popen:
    """`ray ARGS...` started; `done` waits for it."""
    return subprocess.Popen([*raycluster.ray_cli(), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def done(p: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.mark.slow
def test_get_auth_token_then_job_submit_with_a_token(ray_head, tmp_path):
    base = raycluster.without_auth({**os.environ, **raycluster.LOOPBACK_ENV})
    # the head: started with RAY_AUTH_MODE=token and the token in its ~/.ray/auth_token
    head_home = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).parent.parent
    on_head = {**base, "HOME": str(head_home), "RAY_AUTH_MODE": "token"}
    token = (head_home / ".ray" / "auth_token").read_text().strip()
    submit = ["job", "submit", "--address", ray_head.dashboard, *ENTRY]
    laptop = {**base, "HOME": str(tmp_path / "laptop-home"), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    os.makedirs(laptop["HOME"])
    # The four submissions start at once (each job waits seconds on Ray starting its supervisor and its
    # driver), beside the fresh machine's token commands:
    # as the README used to write it (no RAY_AUTH_MODE where submit runs): refused
    refused = ray(*submit, env={k: v for k, v in on_head.items() if k != "RAY_AUTH_MODE"})
    # on the head, as the README writes it: the token comes from ~/.ray/auth_token
    ok = ray(*submit, env=on_head)
    # from another machine: no token file, the token in RAY_AUTH_TOKEN; then a wrong token
    remote = ray(*submit, env=laptop)
    wrong = ray(*submit, env={**laptop, "RAY_AUTH_TOKEN": "0" * 64})

    # a fresh machine: no token yet; the README's `ray get-auth-token --generate` makes ~/.ray/auth_token
    fresh = {**base, "HOME": str(tmp_path / "fresh-home"), "RAY_AUTH_MODE": "token"}
    os.makedirs(fresh["HOME"])
    assert done(ray("get-auth-token", env=fresh)).returncode != 0
    assert done(ray("get-auth-token", "--generate", env=fresh)).returncode == 0
    generated = done(ray("get-auth-token", env=fresh)).stdout.strip()
    assert len(generated) >= 32 and generated == (tmp_path / "fresh-home" / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 32 and token != generated

    refused, ok, remote, wrong = map(done, (refused, ok, remote, wrong))
    assert refused.returncode != 0 and "Authentication required" in refused.stdout + refused.stderr
    assert ok.returncode == 0 and "job-ok 42" in ok.stdout, ok.stdout[-3000:] + ok.stderr
    assert remote.returncode == 0 and "job-ok 42" in remote.stdout, remote.stdout[-3000:] + remote.stderr
    assert wrong.returncode != 0 and "invalid" in wrong.stdout + wrong.stderr
