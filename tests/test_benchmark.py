"""The benchmarks at tiny sizes, every subcommand through pipeline.cli.benchmark.main([...]) (what
jobs/benchmark.py runs): properties, never timings.

- evals: every variant at two N, all counts equal; a formula that disagrees makes the exit status 1.
- diffusers: our CFG and StableDiffusionXLPipeline on the same modules give the same latents/pixels.
- driver: every planned shard submitted and completed once; peak memory per size from a fresh process.
- gpu: skipped without CUDA; its configs are the real SDXL/BLIP-2/CLIP sizes (built on the meta
  device); its code runs end to end on the tiny models on CPU.
- all (slow, local Ray): one JSON report with every part, machine info, and the efficiency ratios.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.benchmarks import evals, gpu, real_sizes
from pipeline.cli import benchmark as bench

EVALS = ["--eval-steps", "2", "3", "--eval-caption-tokens", "4"]
EFFICIENCY = ["--eff-size", "32", "--eff-steps", "2", "--eff-batch", "2", "--eff-images", "4", "--eff-shard-size", "2",
              "--ray-address", "local"]
REPO = Path(__file__).resolve().parent.parent
DIFFUSERS = ["--diff-size", "32", "--diff-steps", "3", "--diff-batch", "2", "--diff-warmup", "1", "--diff-repeats", "2"]
DRIVER = ["--driver-prompts", "1500", "3000", "--driver-shard-size", "100", "--driver-workers", "3"]
GPU = ["--gpu-size", "32", "--gpu-steps", "3", "--gpu-batch", "2", "--gpu-repeats", "1"]


def run(tmp_path: Path, *argv: str) -> tuple[int, dict, str]:
    """(exit status, the JSON report, stdout) of `jobs/benchmark.py argv --json ...`."""
    path = tmp_path / "report.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = bench.main([*argv, "--json", str(path)])
    return rc, json.loads(path.read_text()), buf.getvalue()


# ------------------------------------------------------------------ evals
def test_evals_cover_every_variant_and_equal_the_formulas(tiny_cache, tmp_path):
    rc, rep, out = run(tmp_path, "evals", *EVALS)
    e = rep["evals"]
    assert rc == 0 and e["all_equal"], [r for r in e["rows"] if not r["equal"]]
    assert e["variants"] == 7 + 2 * 3 * 3  # cfg np dns dnp×3 cnp + answer k × schedule × negative
    assert len(e["rows"]) == 2 * e["variants"] and {r["N"] for r in e["rows"]} == {2, 3}
    labels = {r["variant"] for r in e["rows"]}
    assert {"cfg", "np", "dns", "dnp auto", "dnp dns_only", "dnp human", "cnp", "answer k=3 linear C"} <= labels
    for r in e["rows"]:
        assert r["counted"] == r["predictor"] == r["metadata"] == r["formula"] == r["record"] > 0
    by = {(r["variant"], r["N"]): r["counted"] for r in e["rows"]}
    assert by[("cfg", 3)] == 6 and by[("dnp auto", 3)] == 12 and by[("cnp", 3)] == 6 + 12
    assert "all equal: True" in out


def test_evals_exit_1_when_a_count_differs(tiny_cache, tmp_path, monkeypatch):
    real = evals.methods_md_evals
    monkeypatch.setattr(evals, "methods_md_evals", lambda m, *a: real(m, *a) + (m == "dns"))
    rc, rep, _ = run(tmp_path, "evals", "--eval-steps", "2", "--eval-caption-tokens", "2")
    wrong = {r["variant"] for r in rep["evals"]["rows"] if not r["equal"]}
    assert rc == 1 and not rep["evals"]["all_equal"] and wrong == {"dns"}


def test_methods_md_formulas_give_its_worked_examples():
    steps_above_half = [1] * 25 + [0] * 25  # N = 50: 25 steps with τ > T/2
    assert evals.methods_md_evals("answer", 50, steps_above_half, "A", "auto") == 150
    assert evals.methods_md_evals("answer", 50, [3 * k for k in steps_above_half], "A", "auto") == 250
    assert evals.methods_md_evals("cfg", 50, [], "A", "auto") == 100
    assert evals.methods_md_evals("dnp", 50, [], "A", "auto") == 200
    assert evals.methods_md_evals("cnp", 50, [], "A", "auto") == 100 + 50 * 51


# ------------------------------------------------------------------ diffusers
def test_diffusers_pipeline_gives_our_cfg_result_and_says_nothing_else(tiny_cache, tmp_path):
    """`synthgen benchmark diffusers` in a fresh process (transformers warns once per process, so only
    a fresh one shows whether its advisories are silenced as in `synthgen generate`)."""
    path = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("SYNTHGEN_LOG_LEVEL", None)
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "benchmark", "diffusers", *DIFFUSERS,
                        "--json", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    rc, rep, out = p.returncode, json.loads(path.read_text()), p.stdout
    assert "torchvision" not in p.stdout + p.stderr, p.stderr  # transformers' "requires torchvision" advisory
    assert "Warning" not in p.stderr, p.stderr
    d = rep["diffusers"]
    assert rc == 0
    assert d["max_abs_diff_latents"] <= 1e-4
    assert d["max_abs_diff_pixels"] <= 2 / 255  # ours are rounded to uint8
    assert d["ours_s_per_image"] > 0 and d["diffusers_s_per_image"] > 0
    assert d["speed_ratio"] == round(d["diffusers_s_per_image"] / d["ours_s_per_image"], 3)
    assert all(len(v) == 2 for v in d["times_s"].values())
    assert "StableDiffusionXLPipeline" in out


# ------------------------------------------------------------------ driver
def test_driver_dispatches_every_shard_once_and_reports_peak_memory(tmp_path):
    rc, rep, out = run(tmp_path, "driver", *DRIVER)
    d = rep["driver"]
    assert rc == 0 and [r["prompts"] for r in d["results"]] == [1500, 3000]
    for r in d["results"]:
        shards = -(-r["prompts"] // 100)
        assert r["shards"] == r["submitted"] == r["completed"] == shards
        assert r["planned_rejections"] == r["prompts"] // 1000  # write_prompts repeats every 1000th id
        assert r["rows_done"] == r["prompts"]
        assert 0 < r["base_mb"] <= r["peak_mb"] and r["plan_peak_mb"] <= r["peak_mb"]
    assert d["peak_mb_max"] == max(r["peak_mb"] for r in d["results"])
    assert "peak_mb" in out


def test_json_report_round_trips_with_command_and_machine(tmp_path):
    rc, rep, _ = run(tmp_path, "driver", "--driver-prompts", "500", "--driver-shard-size", "100")
    assert rc == 0 and json.loads(json.dumps(rep)) == rep
    assert rep["command"][:2] == ["jobs/benchmark.py", "driver"]
    m = rep["machine"]
    assert m["cpu_count"] >= 1 and len(m["loadavg_start"]) == len(m["loadavg_end"]) == 3
    assert m["torch"] and m["date"] and "gpu" in m


# ------------------------------------------------------------------ gpu
def test_gpu_is_skipped_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the real GPU benchmark would run")
    rc, rep, out = run(tmp_path, "gpu")
    assert rc == 0 and rep["gpu"] == {"skipped": "no CUDA device"}
    assert "skipped (no CUDA device)" in out


def test_gpu_configs_are_the_real_model_sizes():
    """Built on the meta device (no memory): parameter counts of the published checkpoints."""
    sizes = {k: sum(p.numel() for p in v.parameters()) for k, v in real_sizes.sdxl_modules("meta").items()}
    assert sizes == {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                     "text_encoder_2": 694_659_840}
    clips = {k: sum(p.numel() for p in v.parameters()) for k, v in real_sizes.clip_modules("meta").items()}
    assert clips == {"clip": 427_616_513, "pickscore": 986_109_441}
    assert sum(p.numel() for p in real_sizes.blip2_model("meta", 259).parameters()) == 3_744_761_856


@pytest.mark.slow
def test_gpu_code_runs_on_cpu_with_the_tiny_models(tiny_cache):
    args = bench.build_parser().parse_args(["gpu", *GPU, "--peak-tflops", "1"])
    r = gpu.gpu_measure("cpu", False, args)
    assert set(r["methods"]) == {"cfg", "answer", "dnp"}
    assert all(v["images_per_s"] > 0 for v in r["methods"].values())
    assert r["methods"]["cfg"]["evals_per_image"] == 6 and r["methods"]["dnp"]["evals_per_image"] == 12
    assert r["answer_eval_ratio"] == round(r["methods"]["answer"]["evals_per_image"] / 6, 3)
    assert r["flops_per_image"] > 0 and r["mfu"] > 0 and r["stock_diffusers"]["images_per_s"] > 0
    assert r["memory_gib"]["peak_dnp_and_scoring"] is None and r["scoring_errors"] == []


# ------------------------------------------------------------------ all, efficiency (local Ray)
def test_all_runs_every_part_once_into_one_report(tmp_path, monkeypatch):
    """`all` is composition: every part once, one JSON report, a failing part recorded with its error
    while the others still run, exit 1. Each real part is tested on its own above and below (running
    them all again here would cost minutes of the CI budget)."""
    calls = []

    def stand_in(name):
        def part(args):
            calls.append(name)
            if name == "driver":
                raise RuntimeError("driver part broke")
            return {"part": name, "eval_steps": args.eval_steps}
        return part

    monkeypatch.setattr(bench, "PARTS", {name: stand_in(name) for name in bench.PARTS})
    rc, rep, out = run(tmp_path, "all", *EVALS, *EFFICIENCY, *DIFFUSERS, *DRIVER, *GPU)
    assert calls == ["evals", "efficiency", "diffusers", "driver", "gpu"]
    assert rc == 1 and rep["driver"] == {"error": "RuntimeError: driver part broke"}
    for name in ("evals", "efficiency", "diffusers", "gpu"):
        assert rep[name] == {"part": name, "eval_steps": [2, 3]}  # the parsed arguments reached it
    assert rep["command"][:2] == ["jobs/benchmark.py", "all"] and rep["machine"]["loadavg_end"] is not None
    assert "== driver: failed: RuntimeError: driver part broke" in out


@pytest.fixture(scope="module")
def efficiency_report(tiny_cache, tmp_path_factory):
    from test_generate import ensure_test_ray

    ensure_test_ray()  # the suite's shared Ray: the job runs on it (as "existing")
    return run(tmp_path_factory.mktemp("bench-eff"), "efficiency", *EFFICIENCY)


@pytest.mark.slow
@pytest.mark.ray
def test_efficiency_reports_both_rates_and_their_ratios(efficiency_report):
    rc, rep, out = efficiency_report
    assert rc == 0, rep["efficiency"]
    assert "pipeline efficiency" in out
    e = rep["efficiency"]
    bare, job = e["bare"], e["job"]
    assert bare["images"] == job["images"] == 4
    assert bare["images_per_s"] > 0 and job["sampling_images_per_s"] > 0 and job["wall_images_per_s"] > 0
    assert e["ratio"] == round(job["sampling_images_per_s"] / bare["images_per_s"], 3)
    assert e["ratio_wall"] == round(job["wall_images_per_s"] / bare["images_per_s"], 3)
    assert job["wall_s"] >= job["sampling_s"] > 0  # the wall clock includes Ray start and model loading
    assert e["same_threads"] and bare["torch_threads"] == 1
    assert e["params"]["scorers"] == ["clip", "pickscore", "aesthetic"]


def test_the_rehearsals_output_checks_pass_a_finished_run_and_name_what_is_wrong(tmp_path):
    """`rehearsal.check_output` (the tiny runs' output checks, for the full-size rehearsal) on a finished
    output, then on one with a shard's commit gone and one whose tar lost a sample."""
    import tarfile

    from test_generate import commit_all_in_process, make_cfg, write_prompts

    from pipeline.benchmarks.rehearsal import check_output
    from pipeline.data.layout import write_index
    from pipeline.data.storage import open_location

    out = tmp_path / "out"
    prompts6 = write_prompts(tmp_path / "p6.parquet", [f"prompt {i}" for i in range(6)])
    commit_all_in_process(make_cfg(prompts6, out))
    write_index(open_location(str(out)))
    assert check_output(out) == "ok"
    tar = out / "shards" / "000001.tar"
    with tarfile.open(tar) as tf:
        kept = [(m, tf.extractfile(m).read()) for m in tf.getmembers() if not m.name.startswith("000001000000.")]
    with tarfile.open(tar, "w") as tf:
        for m, data in kept:
            tf.addfile(m, io.BytesIO(data))
    assert check_output(out) == "shard 1: the tar's keys differ from the sidecar's ok rows"
    (out / "shards" / "000002.stats.json").unlink()
    assert check_output(out) == "committed [0, 1] of 3 planned shards"
