"""`--dry-run` (pipeline/driver/dryrun.py, pipeline/driver/architecture.py) and the full-size
architectures it plans with (pipeline/models/architectures.py): everything on the meta device, no
weights, no Ray."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch

from pipeline.config import load_config
from pipeline.models import architectures as A

KINDS = {"unet": "unet", "vae": "vae", "text_encoder": "clip_text", "text_encoder_2": "clip_text_projection"}


@pytest.mark.parametrize("model_id, component", sorted(A.PUBLISHED_PARAMS))
def test_bundled_configs_have_the_published_parameter_counts(model_id, component):
    config = A.BUNDLED[model_id][component]
    if component == "unet":
        model = A.meta_unet(config)
    elif component == "vae" or model_id == A.SDXL_VAE_FP16:
        model = A.meta_vae(config)
    elif component:
        model = A.meta_transformers(KINDS[component], config)
    else:
        model = A.meta_transformers("blip2" if model_id == A.BLIP2 else "clip", config)
    assert A.params(model) == A.PUBLISHED_PARAMS[(model_id, component)]
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing was allocated


def test_sdxl_flops_at_1024_match_the_physical_figures():
    """torch's FLOP counter on the bundled SDXL at 1024²: UNet 6.76 TFLOP per eval, VAE decode 10.47
    TFLOP per image (within 2 %)."""
    from pipeline.driver.architecture import Architecture

    # FLOPs do not depend on the dtype: bfloat16 at 1024² makes the passes the planner test below makes
    # (one pass per model and shape per process), the preset's float16 would make its own
    cfg = load_config(["configs/sdxl.yaml"], ["model.dtype=bfloat16"])
    arch = Architecture(cfg)
    assert arch.unet_flops == pytest.approx(6.76e12, rel=0.02)
    assert arch.vae_flops == pytest.approx(10.47e12, rel=0.02)
    assert arch.sources["unet"].endswith("bundled") and arch.sources["vae"].startswith(A.SDXL_VAE_FP16)
    assert arch.params["unet"] == A.PUBLISHED_PARAMS[(A.SDXL, "unet")]


def test_peak_memory_counts_live_tensors_and_takes_attention_as_fused():
    from torch.utils.flop_counter import FlopCounterMode

    q = torch.empty(1, 8, 4096, 64, device="meta")
    with A.PassCost() as p:
        a = torch.empty(1000, device="meta")  # 4000 bytes, alive
        b = torch.empty(1000, device="meta")
        del b  # freed: the peak stays, the live count drops
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    # b was freed before the attention ran; no 8 x 4096 x 4096 score matrix (537 MB) was counted
    assert out.shape == q.shape and p.peak == 4000 + out.numel() * 4
    assert p.live == 4000 + out.numel() * 4
    del a
    # its FLOPs, and those of every other op, are the ones torch counts (attention: QK^T and PV)
    kv, v = torch.empty(1, 8, 77, 64, device="meta"), torch.empty(1, 8, 77, 40, device="meta")
    with A.PassCost() as p:
        torch.nn.functional.scaled_dot_product_attention(q, kv, v)
        torch.empty(3, 5, device="meta") @ torch.empty(5, 7, device="meta")
    with FlopCounterMode(display=False) as torch_count:
        torch.nn.functional.scaled_dot_product_attention(q, kv, v)
    assert torch_count.get_total_flops() == 2 * 8 * 4096 * 77 * (64 + 40)
    assert p.flops == torch_count.get_total_flops() + 2 * 3 * 5 * 7


def test_a_repeated_op_is_counted_like_its_first_call():
    """A pass runs a meta kernel once per op and input signature and remakes its outputs after: every
    call still gets outputs alike the kernel's (sizes, strides, dtype), its FLOPs and its live bytes;
    views and in-place ops are never remade (a view shares its base's storage)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.empty(2, 8, 16, 16, device="meta").to(memory_format=torch.channels_last)
    conv, norm = torch.nn.Conv2d(8, 8, 3, padding=1, device="meta"), torch.nn.LayerNorm(16, device="meta")

    def layer(x):
        return x + torch.nn.functional.silu(norm(conv(x)))  # the sum: x's channels_last strides

    with torch.no_grad():
        alone = layer(x)  # outside any pass
        with FlopCounterMode(display=False) as torch_count:
            layer(x)
        with A.PassCost() as p:
            outs = [layer(x) for _ in range(3)]
        assert p.flops == 3 * torch_count.get_total_flops() > 0
        assert p.live == sum(t.numel() * t.element_size() for t in outs)  # every call's output, nothing else
        assert all((t.shape, t.stride(), t.dtype) == (alone.shape, alone.stride(), alone.dtype) for t in outs)
        assert alone.stride() != torch.empty(alone.shape).stride()  # not the default strides: those are checked
        with A.PassCost():
            views = [x.transpose(2, 3) for _ in range(2)]
            added = [x.clone().add_(1) for _ in range(2)]
    storage = x.untyped_storage()._cdata
    assert all(v.untyped_storage()._cdata == storage for v in views)
    assert all(a.untyped_storage()._cdata != storage for a in added)


def test_dry_run_counts_and_evals_agree_with_the_sampler(tmp_path, tiny_cache):
    """Rows, rejections, samples and images from the real plan; UNet evals from the method records,
    with ANSWER's K_i exactly those the sampler records when it runs the same config."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.driver.dryrun import answer_ks, dry_run
    from pipeline.models.diffusion import load_model
    from pipeline.sampling.batch import SampleRequest, generate_batch
    from pipeline.sampling.methods import METHODS

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a red fox", "", "a blue car", "two cats", "a tree"]}), path)
    cfg = load_config(overrides=[f"input.path={path}", "output.shard_size=2", "sampler.steps=6",
                                 "preference.methods=[cfg,answer]", "preference.candidates=2",
                                 "scoring.scorers=[clip]", "preference.scorer=clip", "sampler.height=32",
                                 "sampler.width=32"])
    plan = dry_run(cfg)
    assert (plan["shards"], plan["rows"], plan["rejected_rows"], plan["samples"]) == (3, 5, 1, 4)
    assert plan["images"] == 4 * 2 * 2
    ks = answer_ks(cfg)
    s = cfg.sampler
    answer_cfg = type(s)(**{**s.__dict__, "method": "answer"})
    out, _ = generate_batch(load_model(cfg.model), [SampleRequest("a red fox", 1, None)], answer_cfg)
    assert out[0].metadata["answer"]["k_schedule"] == ks  # what the sampler ran
    per = {"cfg": 2 * 6, "answer": METHODS["answer"].evals(s, ks)}
    assert plan["unet_evals_per_image"] == per and per["answer"] > per["cfg"]
    assert plan["unet_evals"] == 4 * 2 * (per["cfg"] + per["answer"])
    assert plan["total_flops"] == plan["unet_evals"] * plan["unet_flops_per_eval"] + 16 * plan["vae_flops_per_decode"]
    # one eval's FLOPs (measured on the CFG pair the sampler runs) are torch's count for one sample
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.driver.architecture import Architecture

    with FlopCounterMode(display=False) as counter:
        Architecture(cfg)._unet_forward(1)
    assert plan["unet_flops_per_eval"] == counter.get_total_flops() > 0
    assert plan["memory_gb"]["sampler_weights"].keys() == {"unet", "text_encoders", "vae", "scorer_clip"}
    json.dumps(plan)  # JSON-able as written


def test_dry_run_starts_no_ray_writes_the_plan_and_a_run_may_follow(tmp_path, monkeypatch, capsys):
    from pipeline.cli.generate import main
    from pipeline.driver import localray
    from pipeline.driver.plan import prepare

    monkeypatch.setattr(localray, "connect_ray", lambda *a, **k: (_ for _ in ()).throw(AssertionError("Ray")))
    out = tmp_path / "out"
    assert main(["--dry-run", f"output.path={out}"]) == 0
    printed = capsys.readouterr().out
    assert "plan: 3 shard(s), 24 row(s), 0 rejected, 24 sample(s)" in printed and "UNet evals 480" in printed
    assert re.search(r"input: 1 file\(s\) planned in \d+\.\d s, driver peak \d+ MB", printed), printed
    plan = json.loads((out / "run" / "plan.json").read_text())
    assert plan["plan"]["files"] == 1 and plan["plan"]["seconds"] >= 0 and plan["plan"]["driver_peak_mb"] > 0
    assert 0 < plan["plan"]["plan_bytes"] < 1000 * plan["shards"]  # the plan's arrays: bytes a shard, not a KB
    assert plan["unet_evals"] == 480 and set(plan["memory_gb"]["gpus"]) == {"L4", "A10G", "A100-40GB", "A100-80GB",
                                                                          "H100-80GB", "H200"}
    prepare(load_config(overrides=[f"output.path={out}"]))  # the output with only a plan is not "foreign"
    # A driver without torch (the CLI's) describes the models in a child Python; this process has torch,
    # so the call above described them here. Without torch in sys.modules, the child gives the same plan.
    with monkeypatch.context() as m:
        m.delitem(sys.modules, "torch")
        assert main(["--dry-run", "--plan-json", str(tmp_path / "p.json"), f"output.path={tmp_path / 'o2'}"]) == 0
    in_child = json.loads((tmp_path / "p.json").read_text())
    figures = ("rows", "unet_evals_per_image", "unet_flops_per_eval", "vae_flops_per_decode", "total_flops",
               "config_sources", "memory_gb", "gpu_hours")
    assert {k: in_child[k] for k in figures} == {k: plan[k] for k in figures} and not (tmp_path / "o2").exists()
    assert main(["--dry-run", "model.dtype=float16", f"output.path={tmp_path / 'o3'}"]) == 2
    assert "model.dtype=float16 runs on CPU" in capsys.readouterr().err


def test_the_planner_predicts_a_cpu_host_that_cannot_hold_the_actors(tmp_path, monkeypatch):
    """The rehearsal's stall: full SDXL at 1024² and full BLIP-2 in one float32 actor on a 24 GiB host (the
    weights are memory-mapped, so nothing fails; the run pages and stops moving). The plan says so;
    in bfloat16 with the captioner in its own actor the same host holds both."""
    import psutil

    from pipeline.driver.dryrun import dry_run

    total = 24 * 2**30
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"total": total})())
    base = ["configs/sdxl.yaml"]
    common = [f"output.path={tmp_path / 'o'}", "ray.gpus_per_worker=0", "ray.num_workers=1", "sampler.method=dnp",
              "scoring.scorers=[]", "sampler.steps=2"]
    fp32 = dry_run(load_config(base, common + ["model.dtype=float32", "captioner.dtype=float32",
                                                "captioner.workers=0"]))
    host, m = fp32["memory_gb"]["host"], fp32["memory_gb"]
    # at the preset's 1024² the activations come on top: the weights alone are over 28 GB
    assert not host["fits"] and host["needed_gb"] == m["sampler_actor"] and sum(m["sampler_weights"].values()) > 28
    assert m["sampler_weights"]["captioner"] > 14
    bf16 = dry_run(load_config(base, common + ["model.dtype=bfloat16", "captioner.dtype=bfloat16",
                                                "captioner.workers=1"]))
    host = bf16["memory_gb"]["host"]
    assert host["fits"] and "captioner" not in bf16["memory_gb"]["sampler_weights"]
    assert 7 < bf16["memory_gb"]["captioner_actor"] < 8  # BLIP-2 OPT-2.7b: 3.74 B parameters x 2 bytes
