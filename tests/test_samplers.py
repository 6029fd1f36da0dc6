"""The six invariants of ../shared/docs/methods.md, diffusers parity, loading, and bad parameters."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from pipeline.config import AnswerConfig, CaptionerConfig, ConfigError, DnpConfig, ModelConfig, SamplerConfig
from pipeline.models import diffusion as S
from pipeline.sampling import guidance
from pipeline.sampling.batch import SampleRequest, generate_batch
from pipeline.sampling.chains import Grid, NoisePredictor, answer_chain, fresh_scheduler
from pipeline.sampling.methods import METHODS
from pipeline.seeding import initial_noise, sample_seed

H = W = 32  # latents 4x4: the smallest size the tiny UNet takes
STEPS = 4
REQS = [SampleRequest("a red cat on a sofa", 11, "blurry"), SampleRequest("a lighthouse at dusk", 12, "dark"),
        SampleRequest("two apples", 13, None)]


def cfg_(method="cfg", **kw) -> SamplerConfig:
    return SamplerConfig(method=method, steps=kw.pop("steps", STEPS), height=H, width=W, **kw)


@pytest.fixture(scope="module")
def model(tiny_cache):
    return S.load_model(ModelConfig(id="tiny", cache_dir=str(tiny_cache)))


@pytest.fixture(scope="module")
def captioner(tiny_cache):
    from pipeline.models.captioner import Captioner

    return Captioner(CaptionerConfig(id="tiny", max_new_tokens=8))


def latents(out):
    return torch.stack([o.latents for o in out])


# ------------------------------------------------------------ invariant 1: ANSWER K=0 ≡ CFG
@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_answer_k0_is_bitwise_cfg(model, scheduler):
    ref, _ = generate_batch(model, REQS, cfg_("cfg", scheduler=scheduler))
    ans, t = generate_batch(model, REQS, cfg_("answer", scheduler=scheduler, answer=AnswerConfig(k=0)))
    assert torch.equal(latents(ref), latents(ans))
    assert t.evals == 2 * STEPS * len(REQS)


def test_answer_k_positive_differs_from_cfg(model):
    ref, _ = generate_batch(model, REQS, cfg_("cfg"))
    ans, _ = generate_batch(model, REQS, cfg_("answer", answer=AnswerConfig(k=2)))
    assert (latents(ref) - latents(ans)).abs().max() > 1e-3


# ------------------------------------------------------------ invariant 2: DNS ≡ swapped NP, NP(∅) ≡ CFG
def test_dns_is_np_with_swapped_prompts(model):
    s = cfg_("dns")
    dns_out, _ = generate_batch(model, REQS, s)
    # NP with an empty (∅) positive and p as the negative, run through the same loop.
    from pipeline.sampling.chains import guided_chain

    c_p = S.encode_prompts(model, [r.prompt for r in REQS], H, W)
    c_null = S.null_conditions(model, len(REQS), H, W)
    c_neg = S.encode_negatives(model, [r.prompt for r in REQS], H, W)  # p as the negative
    sched = fresh_scheduler(model.make_scheduler("euler"), STEPS)
    z0 = initial_noise([r.seed for r in REQS], (4, H // 8, W // 8)) * sched.init_noise_sigma
    np_out = guided_chain(NoisePredictor(S.unet_fn(model)), sched, z0, c_neg, c_null, s.guidance_scale)
    assert torch.allclose(c_neg.embeds, c_p.embeds)
    assert torch.equal(np_out, latents(dns_out))


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_np_with_null_negative_is_cfg(model, scheduler):
    reqs = [dataclasses.replace(r, negative_prompt=None) for r in REQS]
    ref, _ = generate_batch(model, reqs, cfg_("cfg", scheduler=scheduler))
    out, _ = generate_batch(model, reqs, cfg_("np", scheduler=scheduler))
    assert torch.equal(latents(ref), latents(out))
    with_neg, _ = generate_batch(model, REQS, cfg_("np", scheduler=scheduler))
    assert (latents(with_neg)[0] - latents(ref)[0]).abs().max() > 1e-4  # a real negative matters
    assert with_neg[0].metadata["negative_prompt"] == "blurry"


# ------------------------------------------------------------ invariant 3: mini-chain touches nothing
@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_mini_chain_leaves_scheduler_and_rng_untouched(model, scheduler):
    sched = fresh_scheduler(model.make_scheduler(scheduler), STEPS)
    grid = Grid.from_scheduler(sched)
    before = copy.deepcopy(sched.__dict__)
    rng = torch.get_rng_state()
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    for j in range(len(grid)):
        z = grid.ode_step(z, torch.ones_like(z) * 0.1, j)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in before.items():
        now = sched.__dict__[k]
        assert torch.equal(now, v) if isinstance(v, torch.Tensor) else now == v, k


def test_only_main_steps_advance_the_scheduler(model):
    sched = fresh_scheduler(model.make_scheduler("euler"), STEPS)
    calls = []
    real_step = sched.step

    def counting_step(*a, **kw):
        calls.append(sched.step_index)
        return real_step(*a, **kw)

    sched.step = counting_step
    seen = []  # the scheduler's index at every UNet call: constant within a main step
    predict = NoisePredictor(S.unet_fn(model))
    inner = predict.unet
    predict.unet = lambda x, t, c: (seen.append(sched.step_index), inner(x, t, c))[1]
    c_p = S.encode_prompts(model, ["a cat"], H, W)
    c_null = S.null_conditions(model, 1, H, W)
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    z0 = torch.randn(1, 4, 4, 4, generator=gen) * sched.init_noise_sigma
    gen_state_after_noise = gen.get_state()
    ks = guidance.answer_schedule("step", 3, [float(t) for t in sched.timesteps])
    answer_chain(predict, sched, z0, c_null, c_p, 5.0, 5.0, ks)
    assert len(calls) == STEPS  # scheduler.step once per main step, never in the mini-chain
    assert calls == [None] + list(range(1, STEPS))
    assert sorted(set(seen), key=lambda v: -1 if v is None else v) == [None] + list(range(1, STEPS))
    assert torch.equal(gen.get_state(), gen_state_after_noise) and not torch.equal(state, gen.get_state())


# ------------------------------------------------------------ invariant 4: Normalize statistics
@pytest.mark.parametrize("mode", ["sample", "channel"])
def test_normalize_matches_reference_statistics(mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g) * 7 + 3
    ref = torch.randn(3, 4, 8, 8, generator=g) * 0.5 - 1
    out = guidance.normalize(x, ref, mode)
    dims = (1, 2, 3) if mode == "sample" else (2, 3)
    assert torch.allclose(out.mean(dims), ref.mean(dims), atol=1e-4)
    assert torch.allclose(out.std(dims), ref.std(dims), atol=1e-4)
    assert torch.equal(guidance.normalize(x, ref, "none"), x)


def test_normalize_in_float32_for_half_inputs():
    x = (torch.randn(2, 4, 8, 8) * 100).to(torch.bfloat16)
    out = guidance.normalize(x, torch.randn(2, 4, 8, 8).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# ------------------------------------------------------------ invariant 5: eval counts = formulas
def test_eval_formulas_match_methods_md_examples(model):
    sched = fresh_scheduler(model.make_scheduler("euler"), 50)
    ts = [float(t) for t in sched.timesteps]
    assert sum(1 for t in ts if t > 500) == 25

    def evals(method, ks=(), **kw):
        return METHODS[method].evals(SamplerConfig(method=method, steps=50, **kw), list(ks))

    assert evals("cfg") == 100 and evals("dnp") == 200
    assert evals("answer", guidance.answer_schedule("step", 1, ts)) == 150
    assert evals("answer", guidance.answer_schedule("step", 3, ts)) == 250
    assert evals("cnp") == 100 + 50 * 51


VARIANTS = [("cfg", {}), ("np", {}), ("dns", {}), ("dnp", {}), ("dnp", {"dnp": DnpConfig(mode="dns_only")}),
            ("dnp", {"dnp": DnpConfig(mode="human")}), ("cnp", {})] + [
    ("answer", {"answer": AnswerConfig(k=k, schedule=sch, negative=neg)})
    for k in (1, 3) for sch in ("step", "clamped", "linear") for neg in ("A", "B", "C")]


@pytest.mark.parametrize("method,extra", VARIANTS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(VARIANTS)])
def test_unet_counter_equals_formula(model, captioner, method, extra):
    steps = 3 if method == "cnp" else STEPS
    s = cfg_(method, steps=steps, **extra)
    counted = []
    inner = S.unet_fn(model)

    def counting(m):  # count rows at the raw UNet boundary, independent of NoisePredictor's counter
        return lambda x, t, c: (counted.append(x.shape[0]), inner(x, t, c))[1]

    orig = S.unet_fn
    S.unet_fn = counting
    try:
        reqs = REQS[:2]
        out, t = generate_batch(model, reqs, s, captioner=captioner)
    finally:
        S.unet_fn = orig
    sched = fresh_scheduler(model.make_scheduler("euler"), steps)
    ks = guidance.answer_schedule(s.answer.k and s.answer.schedule, s.answer.k,
                                  [float(x) for x in sched.timesteps]) if method == "answer" else []
    want = METHODS[method].evals(s, ks)
    assert sum(counted) == want * len(reqs) == t.evals
    assert all(o.metadata["unet_evals"] == want for o in out)
    assert len(counted) == t.calls  # one batched call per chain step for the whole batch


# ------------------------------------------------------------ invariant 6: batch independence
def test_reproducible_and_batch_independent(model):
    s = cfg_("answer", answer=AnswerConfig(k=2))
    full, _ = generate_batch(model, REQS, s)
    again, _ = generate_batch(model, REQS, s)
    assert torch.equal(latents(full), latents(again))  # same batch: bit-identical on CPU float32
    alone = torch.stack([generate_batch(model, [r], s)[0][0].latents for r in REQS])
    rev, _ = generate_batch(model, REQS[::-1], s)
    assert torch.allclose(alone, latents(full), atol=1e-4, rtol=0)
    assert torch.allclose(latents(rev).flip(0), latents(full), atol=1e-4, rtol=0)
    assert full[0].metadata["seed"] == 11 and rev[0].metadata["seed"] == 13


def test_seed_derivation_is_stable_and_distinct():
    assert sample_seed(0, "demo-000", 0) == sample_seed(0, "demo-000", 0)
    assert len({sample_seed(0, "a", 0), sample_seed(0, "a", 1), sample_seed(1, "a", 0), sample_seed(0, "b", 0)}) == 4
    assert 0 <= sample_seed(123, "x") < 2**63
    # The noise of a sample is its own: same seed, same noise, whatever else is in the batch.
    a = initial_noise([1, 2, 3], (4, 4, 4))
    b = initial_noise([3, 1], (4, 4, 4))
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])


# ------------------------------------------------------------ the mini-chain's ODE step is the scheduler's step
@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_ode_step_equals_the_scheduler_step(model, scheduler):
    """Grid.ode_step (the mini-chain's step, which mutates nothing) and the main scheduler's own step
    (Euler s_churn = 0; DDIM η = 0, unclipped x̂₀) give the same latents at every grid point, so an
    ANSWER/CNP chain runs on the same ODE as the main chain."""
    g = torch.Generator().manual_seed(3)
    template = model.make_scheduler(scheduler)
    grid = Grid.from_scheduler(fresh_scheduler(template, 10))
    for j in range(len(grid)):
        # a large ε makes x̂₀ leave [-1, 1]: where a clipping DDIM would differ
        z, eps = torch.randn(2, 4, 4, 4, generator=g) * 3, torch.randn(2, 4, 4, 4, generator=g) * 3
        sched = fresh_scheduler(template, 10)
        kw = {"eta": 0.0} if scheduler == "ddim" else {}
        want = sched.step(eps, sched.timesteps[j], z, return_dict=False, **kw)[0]
        assert (grid.ode_step(z, eps, j) - want).abs().max().item() <= 1e-4, j


# ------------------------------------------------------------ torch.compile: one graph for every batch shape
def test_compiled_unet_is_traced_once_for_every_batch_shape(model, tiny_cache, monkeypatch):
    """model.compile: the UNet meets 2B rows (pairs), B rows (ANSWER variant B), remainders and halves;
    each new shape must not trace (and, with inductor, compile) the UNet again. Counted with a backend
    that records every graph dynamo hands it; the results are the eager UNet's."""
    import torch._dynamo

    graphs = []

    def backend(gm, example_inputs):
        graphs.append([tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)][:1])
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: real_compile(module, backend=backend))
    torch._dynamo.reset()
    try:
        compiled = S.load_model(ModelConfig(id="tiny", cache_dir=str(tiny_cache), compile=True))
        b_variant = AnswerConfig(k=1, negative="B")
        for reqs, s in ((REQS, cfg_("cfg")), (REQS[:2], cfg_("cfg")), (REQS[:1], cfg_("cfg")),
                        (REQS[:1], cfg_("answer", answer=b_variant)), (REQS, cfg_("answer", answer=b_variant))):
            got, _ = generate_batch(compiled, reqs, s)
            want, _ = generate_batch(model, reqs, s)
            assert (latents(got) - latents(want)).abs().max() <= 1e-4
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1, graphs


# ------------------------------------------------------------ loading: a replacement VAE
def test_vae_id_replaces_the_models_own_vae_which_is_never_loaded(tiny_cache, tmp_path, monkeypatch):
    """model.vae_id (e.g. an fp16-safe SDXL VAE) goes into the pipeline's from_pretrained: the model's
    own VAE is not loaded at all (here it is missing), and model.vae_revision reaches the VAE's load."""
    import shutil

    from diffusers import AutoencoderKL

    from pipeline.models.tiny import tiny_sdxl

    src = tiny_sdxl(str(tiny_cache))
    model_dir, vae_dir = tmp_path / "model", tmp_path / "fixed-vae"
    shutil.copytree(src, model_dir)
    shutil.move(str(model_dir / "vae"), vae_dir)  # the model's own VAE is gone
    with torch.no_grad():
        vae = AutoencoderKL.from_pretrained(str(vae_dir))
        vae.decoder.conv_out.bias.add_(0.25)  # a VAE that differs from the model's
        vae.save_pretrained(str(vae_dir))
    seen = []
    real = AutoencoderKL.from_pretrained.__func__

    def spy(cls, path, **kw):
        seen.append((str(path), kw.get("revision")))
        return real(cls, path, **{k: v for k, v in kw.items() if k != "revision"})

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", classmethod(spy))
    m = S.load_model(ModelConfig(id=str(model_dir), vae_id=str(vae_dir), vae_revision="abc123"))
    assert seen == [(str(vae_dir), "abc123")]  # one VAE load: the replacement, at its revision
    assert torch.equal(m.vae.decoder.conv_out.bias, vae.decoder.conv_out.bias)
    # a local directory: the pin could not apply, so it is not recorded as if it had; its files' hash is
    assert m.info["vae_id"] == str(vae_dir) and m.info["vae_revision"] is None
    assert len(m.info["vae_local_config_sha256"]) == 64


def test_unused_trust_remote_code_key_is_gone():
    from pipeline.config import load_config

    with pytest.raises(ConfigError, match="trust_remote_code"):
        load_config([], ["model.trust_remote_code=true"])


# ------------------------------------------------------------ VAE decode in slices
def test_vae_decodes_in_slices_within_one_level_of_the_batched_decode(model):
    """The decode is the memory peak at 1024² and runs after all the UNet work: model.vae_slice
    images per VAE call (default 1) instead of the whole batch, same pixels up to 1/255."""
    z = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    seen = []
    real = model.vae.decode

    def spy(x, *a, **kw):
        seen.append(x.shape[0])
        return real(x, *a, **kw)

    model.vae.decode = spy
    try:
        sliced = S.decode(model, z)
        assert seen == [1] * 5
        seen.clear()
        whole = S.decode(dataclasses.replace(model, vae_slice=5), z)
        assert seen == [5]
        seen.clear()
        pairs = S.decode(dataclasses.replace(model, vae_slice=2), z)
        assert seen == [2, 2, 1]
    finally:
        del model.vae.decode
    assert sliced.shape == whole.shape == (5, 64, 64, 3) and sliced.dtype == torch.uint8
    assert (sliced.int() - whole.int()).abs().max() <= 1 and (pairs.int() - whole.int()).abs().max() <= 1


# ------------------------------------------------------------ diffusers parity
@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_cfg_matches_diffusers_pipeline(model, scheduler):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
        tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet,
        scheduler=model.make_scheduler(scheduler), force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator("cpu").manual_seed(r.seed) for r in REQS]
    ref = pipe(prompt=[r.prompt for r in REQS], num_inference_steps=STEPS, guidance_scale=5.0,
               height=H, width=W, generator=gens, output_type="latent").images
    ours, _ = generate_batch(model, REQS, cfg_("cfg", scheduler=scheduler, guidance_scale=5.0))
    assert (ref - latents(ours)).abs().max().item() <= 1e-4


# ------------------------------------------------------------ DNP really uses the caption
def test_dnp_captions_the_dns_image_and_uses_it(model, captioner):
    seen = []

    def recording(images):
        seen.extend(images)
        return captioner(images)

    dnp, _ = generate_batch(model, REQS, cfg_("dnp", dnp=DnpConfig(keep_negative_image=True)), recording)
    dns, _ = generate_batch(model, REQS, cfg_("dns"))
    # The captioner saw exactly the DNS images of the same seeds.
    assert len(seen) == len(REQS)
    for img, d in zip(seen, dns):
        assert torch.equal(torch.as_tensor(img), d.image)
    caps = captioner(seen)
    assert [o.metadata["negative_prompt"] for o in dnp] == caps
    assert all(o.negative_image is not None for o in dnp)
    # The final chain is NP with that caption, from the same initial noise.
    reqs = [dataclasses.replace(r, negative_prompt=c) for r, c in zip(REQS, caps)]
    np_out, _ = generate_batch(model, reqs, cfg_("np"))
    assert torch.equal(latents(np_out), latents(dnp))


def test_human_dnp_uses_the_given_negatives(model):
    out, _ = generate_batch(model, REQS[:2], cfg_("dnp", dnp=DnpConfig(mode="human")))
    np_out, _ = generate_batch(model, REQS[:2], cfg_("np"))
    assert torch.equal(latents(out), latents(np_out))
    with pytest.raises(ValueError, match="negative_column"):
        generate_batch(model, REQS, cfg_("dnp", dnp=DnpConfig(mode="human")))


# ------------------------------------------------------------ loading through from_pretrained
def test_saved_model_loaded_by_path_matches_in_memory(model, tiny_cache):
    from pipeline.models.tiny import sdxl_pipeline_in_memory, tiny_sdxl

    mem = S.from_pipeline(sdxl_pipeline_in_memory(), ModelConfig(), torch.device("cpu"))
    by_path = S.load_model(ModelConfig(id=str(tiny_sdxl(str(tiny_cache)))))
    a, _ = generate_batch(mem, REQS[:2], cfg_("cfg"))
    b, _ = generate_batch(by_path, REQS[:2], cfg_("cfg"))
    assert torch.equal(latents(a), latents(b))
    assert torch.equal(torch.stack([o.image for o in a]), torch.stack([o.image for o in b]))


def test_v_prediction_is_converted_to_epsilon(model):
    sched = fresh_scheduler(model.make_scheduler("ddim"), STEPS)
    grid = Grid.from_scheduler(sched)
    eps = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))

    def v_model(x_in, t, cond):  # a perfect v-predictor for this ε
        a = grid.alphas_cumprod[int(t)]
        x0 = (x_in - (1 - a).sqrt() * eps) / a.sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    predict = NoisePredictor(v_model, "v_prediction")
    z = torch.randn(2, 4, 4, 4)
    assert torch.allclose(predict(grid, z, 2, None), eps, atol=1e-4)


# ------------------------------------------------------------ bad parameters fail fast
@pytest.mark.parametrize("change,key", [
    (dict(method="foo"), "sampler.method"),
    (dict(answer=AnswerConfig(k=-1)), "sampler.answer.k"),
    (dict(guidance_scale=0.0), "sampler.guidance_scale"),
    (dict(height=60), "sampler.height"),
    (dict(width=0), "sampler.width"),
    (dict(scheduler="pndm"), "sampler.scheduler"),
    (dict(steps=0), "sampler.steps"),
    (dict(answer=AnswerConfig(negative="D")), "sampler.answer.negative"),
    (dict(answer=AnswerConfig(normalize="batch")), "sampler.answer.normalize"),
    (dict(answer=AnswerConfig(schedule="cosine")), "sampler.answer.schedule"),
])
def test_bad_parameters_name_the_key(model, change, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        generate_batch(model, REQS[:1], dataclasses.replace(cfg_(), **change))


def test_unsupported_scheduler_class_is_rejected(model):
    from diffusers import EulerAncestralDiscreteScheduler

    sched = EulerAncestralDiscreteScheduler.from_config(model.scheduler_config)
    sched.set_timesteps(4)
    with pytest.raises(ValueError, match="sampler.scheduler=euler"):
        Grid.from_scheduler(sched)


def test_dnp_without_captioner_fails(model):
    with pytest.raises(ValueError, match="captioner"):
        generate_batch(model, REQS[:1], cfg_("dnp"))
