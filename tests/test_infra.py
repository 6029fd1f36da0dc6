"""Checks of the deployment files in infra/ against each other and against the repository.

Static only (YAML, the Dockerfile's text, pyproject.toml): no Docker, Kubernetes or Ray cluster is
needed, and the module itself takes a second or two. The helper checkers are also run on known-bad
inputs, so a check that could never fail would show up here.
"""

from __future__ import annotations

import functools
import math
import re
import shlex
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "Dockerfile"
README = INFRA / "README.md"
YAML_FILES = ("raycluster.yaml", "rayjob.yaml", "runtime_env.yaml", "cluster.yaml")
ENTRY_SCRIPT = "jobs/generate.py"
GPU_CONFIG = "configs/sdxl.yaml"
RUNTIME_ENV = "infra/runtime_env.yaml"
REQUIRED_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# A credential-like name: HF_TOKEN, AWS_SECRET_ACCESS_KEY, ... but not TOKENIZERS_* or secretKeyRef.
CREDENTIAL_NAME = re.compile(r"(?i)(?<![a-z])(ACCESS_KEY|SECRET|TOKEN|PASSWORD|PASSWD)(?![a-z])")


# ---------------------------------------------------------------- helpers (pure, tested below)


Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str):
    return yaml.load(text, Loader=Loader)


@functools.cache
def load_yaml(name: str):
    """infra/NAME parsed once per session; callers treat the result as read-only."""
    return parse_yaml((INFRA / name).read_text())


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


PIN = re.compile(r"(?<![\w.\-\[])([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([A-Za-z0-9.+!_-]+)")


def dockerfile_pins(text: str) -> dict[str, tuple[Version, set[str]]]:
    """{canonical name: (version, extras)} for every `name==version` in a RUN instruction."""
    pins: dict[str, tuple[Version, set[str]]] = {}
    for instr, args in dockerfile_instructions(text):
        if instr != "RUN":
            continue
        for name, extras, version in PIN.findall(args):
            extra_set = {e.strip() for e in extras.strip("[]").split(",") if e.strip()}
            pins[canonicalize_name(name)] = (Version(version), extra_set)
    return pins


def pin_problems(pins: dict[str, tuple[Version, set[str]]], requirements: list[str]) -> list[str]:
    """What is wrong with `pins` as an install of `requirements` (PEP 508 strings)."""
    problems = []
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name} is not pinned (pyproject.toml: {text})")
            continue
        version, extras = pins[name]
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} is outside pyproject.toml's {text!r}")
        if not set(req.extras) <= extras:
            problems.append(f"{req.name} is pinned without extras {sorted(set(req.extras) - extras)}")
    return problems


def image_is_pinned(ref: str) -> bool:
    """True for `repo:tag` (tag not 'latest') or `repo@sha256:...`."""
    if "@" in ref:
        return True
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:  # no tag at all (the ':' belonged to a registry port)
        return False
    return bool(tag) and tag != "latest"


def base_images(text: str) -> list[str]:
    images, stages = [], set()
    for instr, args in dockerfile_instructions(text):
        if instr != "FROM":
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2])
        if words[0] not in stages:
            images.append(words[0])
    return images


SECRET_ASSIGN = re.compile(
    r"(?i)\b(aws_access_key_id|aws_secret_access_key|aws_session_token|hf_token)\b[ \t]*[=:][ \t]*"
    r"[\"']?([^\s\"'\\]*)"
)
SECRET_SHAPES = (
    re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"),  # AWS access key ids
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face tokens
)


def literal_credentials(text: str) -> list[str]:
    """Credential values written out in a file's text (variable references like $X are fine)."""
    found = [m.group(0) for shape in SECRET_SHAPES for m in shape.finditer(text)]
    for m in SECRET_ASSIGN.finditer(text):
        value = m.group(2)
        if value and not value.startswith(("$", "<", "{")):
            found.append(m.group(0))
    return found


def literal_credentials_in_yaml(data, path: str = "") -> list[str]:
    """Env entries or mapping keys that carry a credential as a literal value."""
    found = []
    if isinstance(data, dict):
        name = data.get("name")
        if isinstance(name, str) and CREDENTIAL_NAME.search(name) and "value" in data:
            found.append(f"{path}: env {name} has a literal value")
        for key, value in data.items():
            # file_mounts map a node's path to a local file (the launcher copies the file): a path
            # named like a credential is fine, as long as it is the same file name on both sides
            mount = path == ".file_mounts" and str(value).rsplit("/", 1)[-1] == str(key).rsplit("/", 1)[-1]
            if CREDENTIAL_NAME.search(str(key)) and isinstance(value, (str, int)) and value != "" and not mount:
                found.append(f"{path}.{key} is a literal")
            found += literal_credentials_in_yaml(value, f"{path}.{key}")
    elif isinstance(data, list):
        for i, item in enumerate(data):
            found += literal_credentials_in_yaml(item, f"{path}[{i}]")
    return found


def parse_entrypoint(command: str) -> tuple[str, list[str], list[str]]:
    """`python SCRIPT [--config FILE ...] [key=value ...]` -> (script, config files, overrides)."""
    words = shlex.split(command)
    assert len(words) >= 2 and words[0] in ("python", "python3"), f"not `python SCRIPT ...`: {command}"
    configs, overrides, rest = [], [], words[2:]
    while rest:
        word = rest.pop(0)
        if word == "--config":
            assert rest, "--config without a file"
            configs.append(rest.pop(0))
        elif word.startswith("--config="):
            configs.append(word.split("=", 1)[1])
        elif "=" in word and not word.startswith("-"):
            overrides.append(word)
        else:
            raise AssertionError(f"unexpected argument {word!r} in {command!r}")
    return words[1], configs, overrides


def readme_submit_command() -> list[str]:
    """The words of the first `ray job submit ...` command in infra/README.md's code blocks."""
    text = README.read_text()
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            if line.strip().startswith("ray job submit"):
                return shlex.split(line)
    raise AssertionError("infra/README.md has no `ray job submit` command in a code block")


def cpu_quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def cluster_specs() -> dict[str, dict]:
    return {
        "raycluster.yaml": load_yaml("raycluster.yaml")["spec"],
        "rayjob.yaml": load_yaml("rayjob.yaml")["spec"]["rayClusterSpec"],
    }


def groups(spec: dict) -> list[tuple[str, dict]]:
    """(group name, group spec) for the head ('head') and every worker group."""
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first


def gpu_limit(group: dict) -> int:
    return int(ray_container(group).get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def dockerfile_env(text: str, key: str) -> str | None:
    for instr, args in dockerfile_instructions(text):
        if instr == "ENV":
            for k, v in re.findall(r"(\w+)=(\S+)", args):
                if k == key:
                    return v.strip("\"'")
    return None


def documented_image() -> str:
    m = re.search(r"^IMAGE=(\S+)$", README.read_text(), flags=re.M)
    assert m, "infra/README.md must document the image as a line `IMAGE=<name:tag>`"
    return m.group(1)


# ---------------------------------------------------------------- the helpers can fail


def test_checkers_reject_bad_inputs():
    assert literal_credentials_in_yaml({"file_mounts": {"~/.ray/auth_token": "0123abcd"}})  # a token, not a file
    assert not literal_credentials_in_yaml({"file_mounts": {"~/.ray/auth_token": "~/.ray/auth_token"}})
    assert pin_problems({"torch": (Version("2.1.0"), set())}, ["torch>=2.3"])
    assert pin_problems({}, ["diffusers>=0.30"])
    assert pin_problems({"ray": (Version("2.60.0"), set())}, ["ray[default]>=2.30"])
    assert not pin_problems({"ray": (Version("2.60.0"), {"default"})}, ["ray[default]>=2.30"])
    assert not image_is_pinned("rayproject/ray:latest")
    assert not image_is_pinned("registry:5000/synthgen")
    assert image_is_pinned("registry:5000/synthgen:0.1.0")
    assert image_is_pinned("nvidia/cuda@sha256:" + "0" * 64)
    fake_key_id = "AKIA" + "Q" * 16
    assert literal_credentials(f"key: {fake_key_id}")
    assert literal_credentials("--from-literal=AWS_SECRET_ACCESS_KEY=abc123")
    assert not literal_credentials('--from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"')
    assert literal_credentials_in_yaml({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]})
    assert literal_credentials_in_yaml({"provider": {"aws_secret_access_key": "x"}})
    dockerfile = 'FROM x:1\n# RUN pip install torch==1.0\nRUN pip install "ray[default]==2.1.0" \\\n a==1'
    pins = dockerfile_pins(dockerfile)
    assert pins == {"ray": (Version("2.1.0"), {"default"}), "a": (Version("1"), set())}
    with pytest.raises(AssertionError):
        parse_entrypoint("python jobs/generate.py --confg configs/sdxl.yaml")


# ---------------------------------------------------------------- manifests


@pytest.mark.parametrize("name", YAML_FILES)
def test_manifest_parses(name):
    data = load_yaml(name)
    assert isinstance(data, dict) and data, f"infra/{name} is empty or not a mapping"


def test_kinds_and_api_versions():
    cluster, job = load_yaml("raycluster.yaml"), load_yaml("rayjob.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    for doc in (cluster, job):
        assert doc["metadata"]["name"]
    launcher = load_yaml("cluster.yaml")
    assert launcher["head_node_type"] in launcher["available_node_types"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_cluster_groups(name):
    spec = cluster_specs()[name]
    head = spec["headGroupSpec"]
    assert gpu_limit(head) == 0, "the head schedules no GPU work"
    assert head["rayStartParams"].get("dashboard-host") == "0.0.0.0"
    assert spec["workerGroupSpecs"], "no worker group"
    for group_name, group in groups(spec):
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), f"{group_name}: rayStartParams: strings"
        pod = group["template"]["spec"]
        shm = [m for m in ray_container(group).get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        assert shm, f"{group_name}: /dev/shm is not mounted"
        volume = next(v for v in pod["volumes"] if v["name"] == shm[0]["name"])
        assert volume.get("emptyDir", {}).get("medium") == "Memory", f"{group_name}: /dev/shm must be RAM"
        if group_name == "head":
            continue
        assert gpu_limit(group) >= 1, f"{group_name}: no nvidia.com/gpu limit"
        requests = ray_container(group)["resources"].get("requests", {})
        if "nvidia.com/gpu" in requests:
            assert int(requests["nvidia.com/gpu"]) == gpu_limit(group)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] >= 1
        assert pod.get("nodeSelector") or pod.get("affinity"), f"{group_name}: no node placement"
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))


def test_rayjob_matches_raycluster():
    cluster, job = cluster_specs().values()
    assert str(cluster["rayVersion"]) == str(job["rayVersion"]), "rayVersion differs"
    cluster_groups, job_groups = dict(groups(cluster)), dict(groups(job))
    assert cluster_groups.keys() == job_groups.keys(), "the RayJob's groups differ from the RayCluster's"
    for name, group in cluster_groups.items():
        assert group["template"] == job_groups[name]["template"], f"pod template of group {name} differs"
        assert group.get("rayStartParams") == job_groups[name].get("rayStartParams")


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_credentials_come_from_secrets(name):
    documented = set(re.findall(r"kubectl create secret generic ([\w-]+)", README.read_text()))
    for group_name, group in groups(cluster_specs()[name]):
        env = {e["name"]: e for e in ray_container(group).get("env", [])}
        for required in REQUIRED_SECRET_ENV:
            assert required in env, f"{name} {group_name}: {required} missing"
        for var, entry in env.items():
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if CREDENTIAL_NAME.search(var):
                assert ref and "value" not in entry, f"{name} {group_name}: {var} must use secretKeyRef"
            if ref:
                assert ref.get("key"), f"{name} {group_name}: {var} names no key of {ref['name']}"
                assert ref["name"] in documented, f"secret {ref['name']} is not created in infra/README.md"


def test_no_literal_credentials_in_infra():
    found = []
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        found += [f"{path.name}: {hit}" for hit in literal_credentials(text)]
        if path.suffix in (".yaml", ".yml"):
            data = parse_yaml(text)
            found += [f"{path.name}: {hit}" for hit in literal_credentials_in_yaml(data)]
            if path.name == "rayjob.yaml":
                found += literal_credentials_in_yaml(parse_yaml(data["spec"]["runtimeEnvYAML"]))
    assert not found, found


def test_rayjob_lifecycle():
    spec = load_yaml("rayjob.yaml")["spec"]
    assert spec.get("submissionMode") == "K8sJobMode", "the RayJob must say submissionMode: K8sJobMode"
    retries = spec.get("backoffLimit")
    assert isinstance(retries, int) and retries >= 1, "the RayJob needs backoffLimit >= 1 (retries)"
    assert spec.get("shutdownAfterJobFinishes") is True, "shutdownAfterJobFinishes: true expected"
    ttl = spec.get("ttlSecondsAfterFinished")
    assert isinstance(ttl, int) and ttl >= 0, "ttlSecondsAfterFinished must be a number of seconds"
    assert isinstance(spec.get("submitterConfig", {}).get("backoffLimit", 0), int)


def test_rayjob_entrypoint_exists_in_repo():
    script, configs, _ = parse_entrypoint(load_yaml("rayjob.yaml")["spec"]["entrypoint"])
    assert script == ENTRY_SCRIPT, f"the RayJob runs {script}, not {ENTRY_SCRIPT}"
    assert GPU_CONFIG in configs, f"the RayJob does not use --config {GPU_CONFIG}"
    for rel in [script, *configs]:
        assert (ROOT / rel).is_file(), f"the RayJob entrypoint uses {rel}, which does not exist"


def test_runtime_env():
    env = load_yaml("runtime_env.yaml")
    assert set(env) <= {"excludes", "env_vars", "pip", "working_dir", "config"}, sorted(env)
    assert {"outputs/", ".git/"} <= set(env["excludes"])
    variables = env["env_vars"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in variables.items())
    for var in variables:
        assert not (var.startswith("AWS_") or CREDENTIAL_NAME.search(var)), f"{var} in the runtime env"
        assert var != "CUDA_VISIBLE_DEVICES", "Ray assigns GPUs; never set CUDA_VISIBLE_DEVICES"
    assert not any(str(p).startswith("torch") for p in env.get("pip", [])), "torch comes from the image"
    job_env = parse_yaml(load_yaml("rayjob.yaml")["spec"]["runtimeEnvYAML"])
    assert job_env.get("env_vars") == variables, "rayjob.yaml env_vars != runtime_env.yaml"
    assert job_env.get("excludes") == env["excludes"], "rayjob.yaml excludes != runtime_env.yaml"
    assert job_env.get("working_dir") == dockerfile_workdir(), "the RayJob's working_dir is not the image's"


def test_readme_submit_command():
    words = readme_submit_command()
    assert "--" in words, "the README's ray job submit has no `--` before the entrypoint"
    head, entry = words[: words.index("--")], words[words.index("--") + 1 :]
    for flag, value in (("--working-dir", "."), ("--runtime-env", RUNTIME_ENV)):
        assert flag in head and head[head.index(flag) + 1] == value, f"README: use `{flag} {value}`"
    assert "--address" in head
    script, configs, _ = parse_entrypoint(shlex.join(entry))
    job_script, job_configs, _ = parse_entrypoint(load_yaml("rayjob.yaml")["spec"]["entrypoint"])
    expected = (ENTRY_SCRIPT, [GPU_CONFIG])
    assert (script, configs) == expected, f"README runs {script} {configs}, expected {expected}"
    assert (job_script, job_configs) == expected, f"RayJob runs {job_script} {job_configs}"


def _command_config(command: str):
    from pipeline.config import load_config

    _, configs, overrides = parse_entrypoint(command)
    return load_config([ROOT / c for c in configs], overrides)


@pytest.mark.parametrize("source", ["rayjob.yaml", "README.md"])
def test_commands_load_and_fit_the_cluster(source):
    """The documented commands are valid configs, and their actors can all be scheduled."""
    if source == "rayjob.yaml":
        command, spec = load_yaml("rayjob.yaml")["spec"]["entrypoint"], cluster_specs()["rayjob.yaml"]
    else:
        words = readme_submit_command()
        command, spec = shlex.join(words[words.index("--") + 1 :]), cluster_specs()["raycluster.yaml"]
    cfg = _command_config(command)
    workers = [g for name, g in groups(spec) if name != "head"]
    gpus = sum(g["maxReplicas"] * gpu_limit(g) for g in workers)
    needed = cfg.ray.num_workers * cfg.ray.gpus_per_worker
    needed += cfg.captioner.workers * cfg.captioner.gpus_per_worker
    assert needed <= gpus, f"{source}: the config needs {needed} GPUs, the cluster has at most {gpus}"
    if cfg.ray.gpus_per_worker > 0:
        for g in workers:
            per_pod = math.floor(gpu_limit(g) / cfg.ray.gpus_per_worker + 1e-9)
            cpus = cpu_quantity(ray_container(g)["resources"]["limits"]["cpu"])
            assert per_pod * cfg.ray.cpus_per_worker <= cpus, f"{g['groupName']}: too few CPUs per pod"


# ---------------------------------------------------------------- image and Dockerfile


def dockerfile_workdir() -> str:
    workdirs = [args for instr, args in dockerfile_instructions(DOCKERFILE.read_text()) if instr == "WORKDIR"]
    assert workdirs, "the Dockerfile sets no WORKDIR"
    return workdirs[-1]


def test_one_image_everywhere():
    image = documented_image()
    assert image_is_pinned(image), f"{image}: give the image an explicit tag, not latest"
    tags = re.findall(r"docker build .*?-t (\S+)", DOCKERFILE.read_text())
    assert tags and set(tags) == {image}, f"Dockerfile documents {tags}, README {image}"
    used = []
    for name, spec in cluster_specs().items():
        for group_name, group in groups(spec):
            used += [(name, group_name, c["image"]) for c in group["template"]["spec"]["containers"]]
    submitter = load_yaml("rayjob.yaml")["spec"].get("submitterPodTemplate")
    if submitter:
        used += [("rayjob.yaml", "submitter", c["image"]) for c in submitter["spec"]["containers"]]
    docker = load_yaml("cluster.yaml")["docker"]
    used += [("cluster.yaml", k, docker[k]) for k in ("image", "head_image", "worker_image") if k in docker]
    wrong = [u for u in used if u[2] != image]
    assert used and not wrong, f"images other than {image}: {wrong}"


def test_dockerfile_base_and_layout():
    text = DOCKERFILE.read_text()
    instructions = dockerfile_instructions(text)
    bases = base_images(text)
    assert bases, "no FROM"
    for ref in bases:
        assert image_is_pinned(ref), f"base image {ref} is not pinned to a tag or digest"
    assert any("py311" in ref for ref in bases) or "python3.11" in text, "Python 3.11 expected"
    assert dockerfile_workdir() == "/app"
    runs = " ".join(args for instr, args in instructions if instr == "RUN")
    assert re.search(r"pip install [^&;]*(-e )?/app\b", runs), "the repository is not installed from /app"
    users = [args for instr, args in instructions if instr == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    assert dockerfile_env(text, "HF_HOME"), "HF_HOME is not set"
    for instr, args in instructions:
        if instr == "COPY":
            sources = [w for w in args.split() if not w.startswith("--")][:-1]
            for src in sources:
                assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which does not exist"


def test_dockerfile_pins():
    text = DOCKERFILE.read_text()
    pins = dockerfile_pins(text)
    for name in ("torch", "diffusers", "transformers", "ray"):
        assert name in pins, f"{name} is not pinned in infra/Dockerfile"
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not pin_problems(pins, dependencies), pin_problems(pins, dependencies)
    ray_version = str(pins["ray"][0])
    for ref in base_images(text):
        if ref.startswith("rayproject/"):
            assert ref.split(":", 1)[1].startswith(ray_version + "-"), f"{ref} is not Ray {ray_version}"
    for name, spec in cluster_specs().items():
        assert str(spec["rayVersion"]) == ray_version, f"{name}: rayVersion is not {ray_version}"


def test_hf_cache_is_mounted_on_gpu_workers():
    hf_home = dockerfile_env(DOCKERFILE.read_text(), "HF_HOME")
    for name, spec in cluster_specs().items():
        for group_name, group in groups(spec):
            if group_name != "head":
                mounts = [m["mountPath"] for m in ray_container(group).get("volumeMounts", [])]
                assert hf_home in mounts, f"{name} {group_name}: no volume at HF_HOME={hf_home}"


def test_token_authentication_is_on_everywhere():
    """No cluster we document runs anyone's code: KubeRay's authOptions (token) on the RayCluster and the
    RayJob's cluster; the cluster launcher starts every node with RAY_AUTH_MODE=token and copies the token
    file (never a literal token); the README's submit exports RAY_AUTH_MODE=token before submitting."""
    for name, spec in cluster_specs().items():
        assert spec.get("authOptions") == {"mode": "token"}, f"{name}: authOptions: {{mode: token}} expected"
    launcher = load_yaml("cluster.yaml")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in launcher[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts), key
    assert "--env RAY_AUTH_MODE=token" in launcher["docker"]["run_options"]
    assert launcher["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    for readme in (ROOT / "README.md", README):
        text = readme.read_text()
        assert "export RAY_AUTH_MODE=token" in text and "ray get-auth-token" in text, readme
        assert text.index("export RAY_AUTH_MODE=token") < text.index("ray job submit --address"), readme
