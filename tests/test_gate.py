"""The quality gate (pipeline/gate, the gated shard loop of pipeline/worker.py): the rule grammar, the
escalation overrides, the tries' seeds, the policy and the figures as plain functions; then runs of the
shipped toy model (`model.id=toy`, scored by `toy_judge`) through ShardWorker without Ray, where the rule
`toy_judge >= 0.5` at 3 steps passes some images at the first try, some later and some never; and one
job on the shared Ray head with two sampler actors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_generate import write_prompts

from pipeline import faults
from pipeline.config import ConfigError, SamplerConfig, load_config
from pipeline.gate import figures as F
from pipeline.gate.escalate import sampler_index, try_samplers
from pipeline.gate.policy import again, verdict
from pipeline.gate.rules import best, failed, parse_rule, parse_rules
from pipeline.seeding import retry_seed, row_seed, try_seed

PROMPTS = ["a red triangle", "two green squares", "a blue circle left of a red square",
           "a green square above a yellow circle", "three blue circles", "a red triangle below a green circle",
           "a blue circle", "two red triangles"]
RULE = "toy_judge >= 0.5"
TRIES = 3


# ------------------------------------------------------------------ the rule grammar
@pytest.mark.parametrize("text, scorer, op, threshold", [
    ("toy_judge >= 1", "toy_judge", ">=", 1.0),
    ("clip >= 0.26", "clip", ">=", 0.26),
    ("aesthetic > 5.5", "aesthetic", ">", 5.5),
    ("  pickscore<=.5 ", "pickscore", "<=", 0.5),
    ("clip < -1e-3", "clip", "<", -0.001),
    ("toy_judge>=+1.", "toy_judge", ">=", 1.0),
])
def test_the_rule_grammar_reads_what_users_write(text, scorer, op, threshold):
    r = parse_rule(text)
    assert (r.scorer, r.op, r.threshold) == (scorer, op, threshold)
    assert r.text == f"{scorer} {op} {text.split(op, 1)[1].strip()}"


@pytest.mark.parametrize("text, message", [
    ("toy_judge = 1", "operator '=' is not one of >=, >, <=, <"),
    ("toy_judge == 1", "operator '==' is not one of"),
    ("toy_judge => 1", "operator '=>' is not one of"),
    ("toy_judge >= high", "threshold 'high' is not a number"),
    ("toy_judge >= nan", "threshold 'nan' is not a number"),
    ("toy_judge >= 1 or clip > 0", "threshold '1 or clip > 0' is not a number"),
    ("__import__('os').system('rm -rf /') >= 1", "not a rule"),
    ("toy_judge", "not a rule"),
    ("", "not a rule"),
    ("sharpness >= 1", "unknown scorer 'sharpness'; choose from clip, pickscore, aesthetic, toy_judge"),
    (1, "a rule is text, not int"),
])
def test_the_rule_grammar_rejects_bad_rules_saying_why(text, message):
    with pytest.raises(ValueError, match="write '<scorer> <op> <number>'|unknown scorer") as e:
        parse_rule(text)
    assert message in str(e.value)


def test_rules_judge_scores_and_missing_scores_fail():
    rules = parse_rules(["toy_judge >= 0.5", "clip < 30"], ["clip", "toy_judge"])
    assert failed(rules, {"toy_judge": 0.5, "clip": 29.0}) == []
    assert failed(rules, {"toy_judge": 0.49, "clip": 30}) == ["toy_judge >= 0.5", "clip < 30"]
    assert failed(rules, {"toy_judge": None, "clip": float("nan")}) == ["toy_judge >= 0.5", "clip < 30"]
    assert failed(rules, None) == ["toy_judge >= 0.5", "clip < 30"]
    # best: most rules passed, then furthest past the first rule, then the earliest
    assert best(rules, [{"toy_judge": 0.1, "clip": 40}, {"toy_judge": 0.2, "clip": 1}, {"toy_judge": 0.4, "clip": 1},
                        {"toy_judge": 0.4, "clip": 2}]) == 2
    with pytest.raises(ConfigError, match=r"gate.rules\[0\]='clip >= 1': scorer 'clip' is not computed"):
        parse_rules(["clip >= 1"], ["toy_judge"])
    with pytest.raises(ConfigError, match="names a rule twice"):
        parse_rules(["clip >= 1", "clip>=1"], ["clip"])


@pytest.mark.parametrize("overrides, message", [
    (["scoring.scorers=[clip]", f"gate.rules=[{RULE}]"], "gate.rules[0]='toy_judge >= 0.5': scorer 'toy_judge' "
                                                          "is not computed by this run; add it to scoring.scorers"),
    (["scoring.scorers=[clip]", "gate.rules=[sharp >= 1]"], "unknown scorer 'sharp'"),
    (["gate.tries=3"], "gate.tries needs gate.rules"),
    (["gate.keep_rejected=true"], "gate.keep_rejected needs gate.rules"),
    (["scoring.scorers=[clip]", "gate.rules=[clip > 0]", "gate.escalate=[{method: answer}]"],
     "gate.escalate applies to tries 2 and later; set gate.tries >= 2"),
    (["scoring.scorers=[clip]", "gate.rules=[clip > 0]", "gate.tries=2", "gate.escalate=[{method: answer},{steps: 9}]"],
     "gate.escalate has 2 entries but gate.tries=2 uses only 1"),
    (["scoring.scorers=[clip]", "gate.rules=[clip > 0]", "gate.tries=2", "gate.escalate=[{methd: answer}]"],
     "gate.escalate[0].methd is not a sampler key"),
    (["scoring.scorers=[clip]", "gate.rules=[clip > 0]", "gate.tries=2", "gate.escalate=[{answer: {k: two}}]"],
     "gate.escalate[0].answer.k='two' must be of type int"),
    (["scoring.scorers=[clip]", "gate.rules=[clip > 0]", "gate.tries=2", "gate.escalate=[{method: magic}]"],
     "gate.escalate[0].method='magic' is not valid"),
    (["scoring.scorers=[clip]", "gate.rules=[clip > 0]", "gate.tries=2", "gate.escalate=[{batch_size: 8}]"],
     "gate.escalate[0].batch_size cannot change between tries"),
    (["scoring.scorers=[clip]", "gate.rules=[clip > 0]", "gate.tries=2",
      "gate.escalate=[{attend_excite: {enabled: true}}]"],
     "gate.escalate[0].attend_excite.enabled needs subject words"),
    (["scoring.scorers=[clip]", "gate.rules=[clip > 0]", "gate.keep_rejected=true", "preference.candidates=2",
      "preference.scorer=clip"], "gate.keep_rejected pairs a sample's accepted try with its failed ones"),
    (["scoring.scorers=[clip]", "gate.rules=[clip > 0]", "gate.on_fail=retry"], "gate.on_fail='retry' is not valid"),
    (["scoring.scorers=[clip]", "gate.rules=[clip > 0]", "gate.expected_pass_rate=0"],
     "gate.expected_pass_rate=0.0 must be in (0, 1]"),
])
def test_gate_config_errors_name_the_key_and_exit_2_before_ray(overrides, message, capsys):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert message in str(e.value)
    from pipeline.cli.generate import main

    assert main(overrides) == 2  # before Ray starts: load_config is the command's first step
    assert message in capsys.readouterr().err


def test_escalations_override_the_sampler_for_later_tries_only():
    base = SamplerConfig(method="cfg", steps=20)
    samplers = try_samplers(base, [{"method": "answer", "answer": {"k": 1, "g_dns": 3}}, {"guidance_scale": 9}])
    assert samplers[0] is base
    assert (samplers[1].method, samplers[1].answer.k, samplers[1].answer.g_dns, samplers[1].steps) == ("answer", 1, 3.0,
                                                                                                      20)
    assert samplers[2].guidance_scale == 9.0 and samplers[2].method == "cfg"  # each entry applies over the base
    assert [sampler_index(t, 2) for t in range(1, 7)] == [0, 1, 2, 2, 2, 2]  # entry i for try i + 2, the last repeats
    assert [sampler_index(t, 0) for t in range(1, 4)] == [0, 0, 0]


def test_try_seeds_are_the_candidates_own_first_and_never_another_seed_later():
    for explicit in (None, 7, 2**64 - 1):
        seeds = {(c, t): try_seed(3, "p:1", c, explicit, t) for c in range(4) for t in range(1, 9)}
        assert all(seeds[(c, 1)] == row_seed(3, "p:1", c, explicit) for c in range(4))
        assert len(set(seeds.values())) == len(seeds)  # no two tries of any candidate share a seed
        retries = {retry_seed(s, a) for s in seeds.values() for a in (1, 2, 3)}
        assert not retries & set(seeds.values())
        assert seeds == {(c, t): try_seed(3, "p:1", c, explicit, t) for c in range(4) for t in range(1, 9)}
    # a prompt id of "gate" cannot make a candidate's seed look like a try's
    assert try_seed(0, "gate", 0, None, 2) not in {row_seed(0, "gate", c, None) for c in range(50)}


def test_the_policy_keeps_drops_or_picks_the_best_try():
    rules = parse_rules(["toy_judge >= 1"], ["toy_judge"])

    def t(n, score):
        return {"try": n, "seed": n, "method": "cfg", "scores": {"toy_judge": score},
                "failed": failed(rules, {"toy_judge": score})}

    assert again(t(1, 0.5), 3) and not again(t(3, 0.5), 3) and not again(t(1, 1.0), 3)
    assert not again({"try": 1, "error": "out of memory"}, 3)
    v = verdict(rules, "drop", [[t(1, 0.5), t(2, 1.0)]])
    assert (v.end, v.chosen, v.records[0]["passed"], v.records[0]["chosen"], v.records[0]["tries"]) == \
        ("kept", [1], True, 2, 2)
    v = verdict(rules, "drop", [[t(1, 0.5), t(2, 0.7), t(3, 0.2)]])
    assert v.end == "dropped" and v.chosen == [] and v.reason == "gate: none of 3 tries passed toy_judge >= 1"
    v = verdict(rules, "best", [[t(1, 0.5), t(2, 0.7), t(3, 0.2)]])
    assert (v.end, v.chosen, v.records[0]["chosen"], v.records[0]["passed"]) == ("kept_best", [1], 2, False)
    v = verdict(rules, "drop", [[t(1, 1.0)], [t(1, 0.5), {"try": 2, "seed": 2, "method": "cfg", "error": "boom"}]])
    assert v.end == "failed" and v.reason == "boom"
    v = verdict(rules, "drop", [[t(1, 1.0)], [t(1, 0.5), t(2, 0.0)]])
    assert v.reason == "gate: none of 2 tries (image 1 of the group's 2) passed toy_judge >= 1"


def test_figures_sum_over_shards_and_give_acceptance_and_cost():
    a, b = F.new_figures(["r"], 3, 40), F.new_figures(["r"], 3, 40)
    for f, outcomes in ((a, [["r"], ["r"], []]), (b, [["r"], []])):
        for n, bad in enumerate(outcomes, 1):
            F.count_try(f, n, bad)
    F.count_row(a, "kept")
    F.count_row(b, "kept")
    F.count_try(b, 1, ["r"])
    F.count_try(b, 2, None)
    F.count_row(b, "failed")
    a["unet_evals"], b["unet_evals"], b["ae_evals"] = 120, 160, 10
    m = F.merge(a, b)
    assert m["tried"] == [3, 3, 1] and m["passed"] == [0, 1, 1] and m["rule_failures"] == {"r": 4}
    assert (m["rows"], m["kept"], m["failed"], m["slots"]) == (3, 2, 1, 3)
    d = F.derived(m)
    assert [x["acceptance"] for x in d["by_try"]] == [0.0, 1 / 3, 1.0]
    assert [x["accepted_by_now"] for x in d["by_try"]] == [0.0, 1 / 3, 2 / 3]
    assert d["evals_per_kept"] == pytest.approx((280 + F.AE_PASS_EVALS * 10) / 2)
    assert d["cost_per_kept"] == pytest.approx(d["evals_per_kept"] / 40)
    assert F.merge(None, a) == a and F.merge(None, None) is None
    e = F.expected([40, 60, 60], 3, 0.5, "drop")
    assert e["expected_tries"] == 1.75 and e["expected_evals"] == 40 + 30 + 15 and e["kept_fraction"] == 0.875
    assert e["worst_evals"] == 160 and F.expected([40], 1, None, "drop") == {"tries": 1, "worst_evals": 40,
                                                                             "pass_rate": None}


# ------------------------------------------------------------------ gated runs of the toy model (no Ray)
@pytest.fixture(scope="module")
def toy():
    from pipeline.config import ModelConfig
    from pipeline.models.diffusion import load_model

    return load_model(ModelConfig(id="toy"))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("gate-in") / "prompts.parquet", PROMPTS)


def gate_args(prompts_file, out, *extra):
    return [f"input.path={prompts_file}", "input.id_column=id", f"output.path={out}", "model.id=toy",
            "sampler.steps=3", "sampler.height=64", "sampler.width=64", "sampler.batch_size=3", "output.shard_size=4",
            "scoring.scorers=[toy_judge]", f"gate.rules=[{RULE}]", f"gate.tries={TRIES}", *extra]


def run_inproc(toy, prompts_file, out, *extra, shards=None):
    from pipeline.data.source import plan_shards
    from pipeline.driver.plan import prepare
    from pipeline.worker import ShardWorker

    p = prepare(load_config(overrides=gate_args(prompts_file, out, *extra)))
    w = ShardWorker(p.cfg, model=toy)
    return [w.run(s) for s in plan_shards(p.cfg.input, p.cfg.output.shard_size)
            if shards is None or s.shard_id in shards]


def read_out(out: Path) -> tuple[dict[str, dict], dict[str, dict], dict[str, dict]]:
    """(key -> json, key -> {file: bytes}, key -> sidecar row) straight from the shard files."""
    metas, files = {}, {}
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, _, ext = m.name.partition(".")
                data = tf.extractfile(m).read()
                if ext == "json":
                    metas[key] = json.loads(data)
                else:
                    files.setdefault(key, {})[ext] = data
    side = {r["key"]: r for p in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
    return metas, files, side


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*")) if p.suffix in (".tar", ".parquet")}


@pytest.fixture(scope="module")
def gated(toy, prompts_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("gated") / "out"
    stats = run_inproc(toy, prompts_file, out)
    return out, stats


def test_a_gated_run_keeps_only_images_that_pass_and_drops_the_rest_as_rejections(gated):
    from PIL import Image

    from pipeline.toy import judge

    out, stats = gated
    metas, files, side = read_out(out)
    rule = parse_rule(RULE)
    assert len(side) == len(PROMPTS) and {r["status"] for r in side.values()} <= {"ok", "rejected"}
    # every kept sample passes the rule, judged again on the stored image itself
    for key, meta in metas.items():
        g = meta["gate"]
        assert g["passed"] and g["rules"] == [RULE] and meta["scores"]["toy_judge"] >= 0.5
        image = Image.open(io.BytesIO(files[key]["png"]))
        assert rule.holds(judge.compliance(meta["prompt"], image)["score"])
        assert g["attempts"][-1]["seed"] == meta["seed"] == side[key]["seed"] and g["chosen"] == g["tries"]
        assert all(a["failed"] == [RULE] for a in g["attempts"][:-1]) and g["attempts"][-1]["failed"] == []
        assert set(files[key]) == {"png", "txt"}  # keep_rejected is off: no other tries' images
    dropped = {k: r for k, r in side.items() if r["status"] == "rejected"}
    for r in dropped.values():  # beyond gate.tries: a rejection with reason gate, its tries' scores in the sidecar
        g = json.loads(r["gate"])
        assert r["error"] == f"gate: none of {TRIES} tries passed {RULE}" and r["key"] not in metas
        assert not g["passed"] and len(g["attempts"]) == TRIES
        assert all(a["scores"]["toy_judge"] < 0.5 and a["failed"] == [RULE] for a in g["attempts"])
    tries = [a for r in side.values() for a in json.loads(r["gate"])["attempts"]]
    assert len({a["seed"] for a in tries}) == len(tries)  # every try had its own seed
    for r in side.values():  # try 1 is the row's own seed, later ones derive from it
        for a in json.loads(r["gate"])["attempts"]:
            assert a["seed"] == try_seed(0, r["prompt_id"], 0, None, a["try"])
            assert a["try"] > 1 or a["seed"] == row_seed(0, r["prompt_id"], 0, None)
    later = [m for m in metas.values() if m["gate"]["tries"] > 1]
    assert later and dropped and any(m["gate"]["tries"] == 1 for m in metas.values()), \
        "the rule must pass some images at the first try, some later and some never"
    # the shards' figures count what the rows record
    f = F.merge(stats[0].extra["gate"], stats[1].extra["gate"])
    assert (f["kept"], f["dropped"], f["rows"]) == (len(metas), len(dropped), len(PROMPTS))
    assert sum(f["tried"]) == len(tries) and f["rule_failures"] == {RULE: sum(a["failed"] != [] for a in tries)}
    assert f["passed"] == [sum(m["gate"]["tries"] == t for m in metas.values()) for t in range(1, TRIES + 1)]
    assert f["unet_evals"] == sum(s.unet_evals for s in stats) == 6 * len(tries)


def test_a_gated_run_is_byte_identical_rerun_resumed_and_after_a_failed_attempt(gated, toy, prompts_file, tmp_path,
                                                                                monkeypatch):
    out, _ = gated
    again_out = tmp_path / "again"
    run_inproc(toy, prompts_file, again_out)
    assert shard_bytes(again_out) == shard_bytes(out)
    # a resume: shard 0 by one worker, the rest by another, after an attempt of shard 1 died mid-shard (its
    # second batch, with the first batch's failed tries, raises)
    resumed = tmp_path / "resumed"
    run_inproc(toy, prompts_file, resumed, shards={0})
    monkeypatch.setenv("SYNTHGEN_FAULT_DIR", str(tmp_path))
    monkeypatch.setattr(faults, "_RULES", faults._parse("sample:raise:1:000001000003"))
    with pytest.raises(faults.InjectedFault):
        run_inproc(toy, prompts_file, resumed, shards={1})
    assert not (resumed / "shards" / "000001.stats.json").exists()
    run_inproc(toy, prompts_file, resumed, shards={1})
    assert shard_bytes(resumed) == shard_bytes(out)


def test_with_the_gate_off_a_run_is_as_before_and_its_first_tries_are_the_gated_runs(gated, toy, prompts_file,
                                                                                      tmp_path):
    """gate.rules=[]: no `gate` in samples, sidecars or stats; each sample is the gated run's try 1 (the same
    seed, the same image where try 1 passed: up to float rounding, as batches hold other rows' tries)."""
    import numpy as np
    from PIL import Image

    def pixels(png):
        return np.asarray(Image.open(io.BytesIO(png)), dtype=float)

    out, _ = gated
    gated_metas, gated_files, _ = read_out(out)
    stats = run_inproc(toy, prompts_file, tmp_path / "off", "gate.rules=[]", "gate.tries=1")
    metas, files, side = read_out(tmp_path / "off")
    assert len(metas) == len(side) == len(PROMPTS) and {r["status"] for r in side.values()} == {"ok"}
    assert all("gate" not in m for m in metas.values()) and all("gate" not in r for r in side.values())
    assert all("gate" not in st.extra for st in stats)
    first = {k: m for k, m in gated_metas.items() if m["gate"]["tries"] == 1}
    assert first and all(metas[k]["seed"] == m["seed"] for k, m in first.items())
    assert all(np.abs(pixels(files[k]["png"]) - pixels(gated_files[k]["png"])).max() <= 2 for k in first)
    assert all(metas[k]["seed"] == row_seed(0, metas[k]["prompt_id"], 0, None) for k in metas)


def test_the_fingerprint_holds_the_gate_only_when_on_and_never_the_expected_pass_rate(prompts_file, tmp_path):
    """gate.expected_pass_rate plans a --dry-run, so a resume with another one goes on; the gate's keys count
    only when gate.rules is set, so outputs written before the gate existed resume as before."""
    from pipeline.driver.plan import RunRefused, fingerprint_config, prepare

    def cfg(out, *extra):
        return load_config(overrides=gate_args(prompts_file, out, *extra))

    off = fingerprint_config(load_config(overrides=gate_args(prompts_file, tmp_path / "o")[:-2]
                                         + ["gate.expected_pass_rate=0.3"]))
    assert not [k for k in off if k.startswith("gate")]
    on = fingerprint_config(cfg(tmp_path / "o"))
    assert on["gate.rules"] == [RULE] and on["gate.tries"] == TRIES and "gate.expected_pass_rate" not in on
    assert {k: v for k, v in on.items() if not k.startswith("gate")} == off
    out = tmp_path / "resume"
    prepare(cfg(out, "gate.expected_pass_rate=0.2"))
    prepare(cfg(out, "gate.expected_pass_rate=0.9"))  # a planning hint: the same dataset
    prepare(cfg(out))
    for other, key in (("gate.tries=5", "gate.tries"), ("gate.on_fail=best", "gate.on_fail"),
                       ("gate.rules=[toy_judge >= 0.75]", "gate.rules")):
        with pytest.raises(RunRefused, match=f"{key}: "):
            prepare(cfg(out, other))


def test_on_fail_best_keeps_the_best_try_marked_not_passed(gated, toy, prompts_file, tmp_path):
    out, _ = gated
    _, _, dropped_side = read_out(out)
    run_inproc(toy, prompts_file, tmp_path / "best", "gate.on_fail=best")
    metas, _, side = read_out(tmp_path / "best")
    assert {r["status"] for r in side.values()} == {"ok"}
    for key, r in dropped_side.items():
        if r["status"] != "rejected":
            continue
        g = metas[key]["gate"]
        scores = [a["scores"] for a in g["attempts"]]
        assert not g["passed"] and g["tries"] == TRIES and g["attempts"] == json.loads(r["gate"])["attempts"]
        assert g["chosen"] == best(parse_rules([RULE], ["toy_judge"]), scores) + 1
        assert metas[key]["seed"] == g["attempts"][g["chosen"] - 1]["seed"]


def test_preference_groups_are_gated_per_candidate(toy, prompts_file, tmp_path):
    run_inproc(toy, prompts_file, tmp_path / "groups", "preference.candidates=2", "preference.scorer=toy_judge")
    metas, files, side = read_out(tmp_path / "groups")
    assert metas and all(len(m["candidates"]) == 2 for m in metas.values())
    for key, m in metas.items():  # every candidate passed, on its own tries and seeds
        assert all(c["gate"]["passed"] and c["scores"]["toy_judge"] >= 0.5 for c in m["candidates"])
        assert [c["gate"]["attempts"][0]["seed"] for c in m["candidates"]] == [
            row_seed(0, m["prompt_id"], c, None) for c in (0, 1)]
        assert set(files[key]) == {"0.png", "1.png", "txt"}
    dropped = [r for r in side.values() if r["status"] == "rejected"]
    assert dropped and all("of the group's 2) passed" in r["error"] for r in dropped)
    assert all(len(json.loads(r["gate"])["candidates"]) == 2 for r in dropped)


def test_the_cascade_uses_the_escalated_method_only_after_the_first_try(toy, prompts_file, tmp_path):
    from pipeline.sampling.methods import METHODS

    stats = run_inproc(toy, prompts_file, tmp_path / "cascade", "gate.escalate=[{method: answer, answer: {k: 1}}]")
    metas, _, side = read_out(tmp_path / "cascade")
    tries = [a for r in side.values() for a in json.loads(r["gate"])["attempts"]]
    assert {a["method"] for a in tries if a["try"] == 1} == {"cfg"}
    assert {a["method"] for a in tries if a["try"] > 1} == {"answer"}
    assert all(a["unet_evals"] == 6 for a in tries if a["try"] == 1)
    later = [m for m in metas.values() if m["gate"]["tries"] > 1]
    assert later and all(m["method"] == "answer" and m["answer"]["k"] == 1 for m in later)
    answer_evals = {m["unet_evals"] for m in later}  # ANSWER's own count, from its recorded K_i
    s = SamplerConfig(method="answer", steps=3)
    s.answer.k = 1
    assert answer_evals == {METHODS["answer"].evals(s, later[0]["answer"]["k_schedule"])} and answer_evals != {6}
    assert sum(a["unet_evals"] for a in tries) == sum(st.unet_evals for st in stats)


def test_keep_rejected_exports_judge_labelled_pairs_that_diffusion_dpo_reads(toy, prompts_file, tmp_path):
    """Diffusion-DPO's train.py keeps rows with label_0 in (0, 1), opens jpg_0/jpg_1 with
    Image.open(BytesIO(b)).convert("RGB") and tokenizes `caption` when it is a string."""
    import numpy as np
    from PIL import Image

    from pipeline.data.pairs import SKIP_REASONS, export_pairs, slot_flip

    out = tmp_path / "kept"
    run_inproc(toy, prompts_file, out, "gate.keep_rejected=true")
    metas, files, _ = read_out(out)
    later = {k: m for k, m in metas.items() if m["gate"]["tries"] > 1}
    assert later and all(set(files[k]) == {"png", "txt", *(f"try{t}.png" for t in range(1, m["gate"]["tries"]))}
                         for k, m in later.items())
    report = export_pairs(str(out), str(tmp_path / "pairs.parquet"))
    table = pq.read_table(tmp_path / "pairs.parquet")
    rows = table.to_pylist()
    assert len(rows) == report["pairs"] == sum(m["gate"]["tries"] - 1 for m in later.values())
    assert report["skipped"]["gate_no_failed_try"] == len(metas) - len(later) and set(report["skipped"]) == set(
        SKIP_REASONS)
    assert table.column_names[:7] == ["caption", "jpg_0", "jpg_1", "label_0", "label_1", "model_0", "model_1"]
    kept = [r for r in rows if r["label_0"] in (0, 1)]  # train.py's filter of ties
    assert len(kept) == len(rows) and {r["label_0"] + r["label_1"] for r in rows} == {1.0}
    for r in kept:
        assert isinstance(r["caption"], str) and r["caption"] == metas[r["key"]]["prompt"]
        images = [Image.open(io.BytesIO(r[c])).convert("RGB") for c in ("jpg_0", "jpg_1")]
        assert all(im.mode == "RGB" and im.size == (64, 64) for im in images)
        win, lose = (0, 1) if r["label_0"] == 1 else (1, 0)
        g = metas[r["key"]]["gate"]
        assert r[f"seed_{win}"] == metas[r["key"]]["seed"] and r[f"score_{win}"] >= 0.5 > r[f"score_{lose}"]
        lost = next(a for a in g["attempts"] if a["seed"] == r[f"seed_{lose}"])
        assert r["label_0"] == (0.0 if slot_flip(f"{r['key']}\x1ftry{lost['try']}") else 1.0)  # slot by hash
        stored = np.asarray(Image.open(io.BytesIO(files[r["key"]][f"try{lost['try']}.png"])), dtype=float)
        assert np.abs(np.asarray(images[lose], dtype=float) - stored).mean() < 6  # that try's image


class TarReads:
    """A filesystem that passes every call through and records how the tars are read."""

    def __init__(self, fs):
        self._fs, self.tar_reads = fs, []

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def cat_file(self, path, start=None, end=None, **kw):
        if str(path).endswith(".tar"):
            self.tar_reads.append(None if start is None else (start, end))
        return self._fs.cat_file(path, start=start, end=end, **kw)

    def open(self, path, mode="rb", **kw):
        if "r" in mode and str(path).endswith(".tar"):
            self.tar_reads.append("open")
        return self._fs.open(path, mode, **kw)


def test_the_card_shows_acceptance_per_try_and_the_cost_per_kept_sample(gated):
    """The gate's figures come from the stats files (summed in the Ledger, any order), never a pass
    over the tars: the only tar reads are the contact sheet's ranged ones."""
    from pipeline.data.storage import Location, open_location
    from pipeline.report.card import write_card
    from pipeline.report.collect import Ledger

    out, stats = gated
    base = open_location(str(out))
    spy = TarReads(base.fs)
    write_card(Location(spy, base.root, False), summary={})
    assert spy.tar_reads and all(isinstance(r, tuple) for r in spy.tar_reads)  # tiles, by range
    text = (out / "README.md").read_text()
    f = F.merge(stats[0].extra["gate"], stats[1].extra["gate"])
    forward, backward = Ledger([s.shard_id for s in stats]), Ledger([s.shard_id for s in stats])
    for st in stats:
        forward.add(st)
    for st in reversed(stats):
        backward.add(st)
    assert forward.card_input().gate == backward.card_input().gate == f and f["rows"] == sum(s.rows for s in stats)
    d = F.derived(f)
    assert "## Quality gate" in text and f"`{RULE}`" in text
    for t in d["by_try"]:
        assert f"| {t['try']} | {t['tried']} | {t['passed']} | {t['acceptance']:.3f} | {t['accepted_by_now']:.3f} |" \
            in text
    cost = sum(s.unet_evals for s in stats) / f["kept"]
    assert f"| Cost per kept sample | {cost:.1f} UNet evals ({cost / 6:.2f}x cfg's 6 evals per image) |" in text
    assert f"| Dropped (rejected, reason `gate`) | {f['dropped']} ({100 * f['dropped'] / f['rows']:.1f} %) |" in text
    assert f"| `{RULE}` | {f['rule_failures'][RULE]} |" in text


def test_dry_run_prints_the_worst_case_and_the_expected_cost(prompts_file, tmp_path):
    from pipeline.driver.dryrun import dry_run, format_plan

    cfg = load_config(overrides=gate_args(prompts_file, tmp_path / "o", "gate.tries=4", "gate.expected_pass_rate=0.5",
                                          "gate.escalate=[{method: answer, answer: {k: 1}}]"))
    plan = dry_run(cfg)
    g, n = plan["gate"], len(PROMPTS)
    answer = g["per_try"]["cfg"][1]["unet_evals"]
    assert [t["method"] for t in g["per_try"]["cfg"]] == ["cfg", "answer", "answer", "answer"] and answer > 6
    assert g["worst_case"]["images"] == 4 * n and g["worst_case"]["unet_evals"] == n * (6 + 3 * answer)
    e = g["expected"]
    assert e["evals"] == pytest.approx(n * (6 + answer / 2 + answer / 4 + answer / 8))
    assert e["kept_samples"] == pytest.approx(n * (1 - 0.5**4))
    assert e["cost_per_kept"] == pytest.approx(e["evals"] / e["kept_samples"] / 6)
    text = format_plan(plan)
    assert f"gate worst case (every image at gate.tries=4): {4 * n} images, {n * (6 + 3 * answer)} UNet evals" in text
    assert "x cfg's 6 evals per image" in text
    plan["gate"]["expected"] = None  # gate.expected_pass_rate unset
    assert "gate expected cost: set gate.expected_pass_rate" in format_plan(plan)


def test_progress_counts_kept_samples_and_tries():
    from pipeline.driver.policy import Limits, ShardBook
    from pipeline.driver.progress import Progress
    from pipeline.records import ShardStats

    p = Progress(10, 0, 10.0, io.StringIO())
    p.update("w0", 1, 2, 1, tries=5)
    p.add(ShardStats(0, 4, 3, 1, 0, extra={"gate": {"tried": [4, 2, 1]}}))
    f = p.figures(ShardBook([], Limits()), [])
    assert (f["rows_done"], f["samples"], f["tries"]) == (6, 4, 12)
    assert Progress(10, 0, 10.0, io.StringIO()).figures(ShardBook([], Limits()), [])["tries"] is None  # no gate


# ------------------------------------------------------------------ one job on Ray
@pytest.mark.slow
def test_a_gated_job_on_ray_with_two_actors_matches_the_in_process_run(ray_local, gated, prompts_file, tmp_path):
    from pipeline.driver.job import run_job

    out, _ = gated
    seen = []
    cfg = load_config(overrides=gate_args(prompts_file, tmp_path / "ray", "ray.num_workers=2", "ray.cpus_per_worker=1",
                                          "ray.address=local", "logging.progress_interval_s=1"))
    res = run_job(cfg, hooks=lambda event, payload: seen.append(payload) if event == "progress" else None)
    assert res.exit_code == 0, res.summary
    assert shard_bytes(tmp_path / "ray") == shard_bytes(out)
    _, _, side = read_out(out)
    assert seen[-1]["samples"] == sum(r["status"] == "ok" for r in side.values())
    assert seen[-1]["tries"] == sum(len(json.loads(r["gate"])["attempts"]) for r in side.values())
    assert "## Quality gate" in (tmp_path / "ray" / "README.md").read_text()
