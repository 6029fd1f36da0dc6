"""ShardWorker: one ShardSpec in, one committed shard out. A plain class; Ray wraps it elsewhere.

Models load once in __init__. `run(spec)` streams the shard's rows in micro-batches through the
sampler (and scorers), writes every row to the ShardSink (a sample, or a recorded rejection or
failure) and returns small stats — never images.

With the quality gate (gate.rules, pipeline/gate) each image the row asks for is tried until its
scores pass every rule or gate.tries are spent. Tries wait in one queue per sampler (the method's,
or gate.escalate's for later tries); a batch runs whenever a queue holds a full one, so a row's
failed image is batched with the next rows' first tries, and only the shard's last batches run
short. The order is fixed by the shard's rows, so a rerun gives the same batches and bytes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from pipeline import faults
from pipeline.config import Config
from pipeline.data.layout import read_stats
from pipeline.data.sink import AlreadyCommitted, ShardSink
from pipeline.data.source import read_shard
from pipeline.data.storage import open_location
from pipeline.gate import figures as gate_figures
from pipeline.gate.escalate import sampler_index
from pipeline.gate.policy import again, verdict
from pipeline.gate.rules import failed, parse_rules
from pipeline.models.device import resolve_device
from pipeline.models.diffusion import load_model
from pipeline.records import FAILED, REJECTED, PromptRecord, RowOutcome, Sample, ShardSpec, ShardStats
from pipeline.sampling.attend_excite import check_resolution, row_subjects
from pipeline.sampling.batch import Generated, SampleRequest, generate_batch
from pipeline.sampling.methods import needs_captioner, run_methods, run_samplers
from pipeline.scoring.preference import pick_pair
from pipeline.seeding import retry_seed, row_seed, try_seed

log = logging.getLogger(__name__)


@dataclass
class _Job:
    """One image to make: a record, a candidate index and the method config to use."""

    record: PromptRecord
    candidate: int
    method: str
    seed: int
    try_: int = 1  # the quality gate's try of this image
    slot: int = 0  # which of the row's images (method x candidate) it is


class ShardWorker:
    def __init__(self, cfg: Config, captioner: Any = None, scorers: Any = None, name: str = "",
                 model: Any = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.model.device)
        self.model = model or load_model(cfg.model, self.device)  # tests and jobs may share one
        self.samplers = run_samplers(cfg)  # method -> the sampler of each try (gate.escalate)
        self.rules = parse_rules(list(cfg.gate.rules), list(cfg.scoring.scorers))
        self._ae = [s for ss in self.samplers.values() for s in ss if s.attend_excite.enabled]
        for s in self._ae:  # a map size this UNet lacks fails here, not in every batch
            check_resolution(self.model, s)
        if captioner is None and needs_captioner(cfg):
            from pipeline.models.captioner import Captioner

            captioner = Captioner(cfg.captioner, self.device)
        self.captioner = captioner
        if scorers is None and cfg.scoring.scorers:
            from pipeline.scoring.scorers import load_scorers

            scorers = load_scorers(cfg.scoring, self.device)
        self.scorers = scorers
        self.location = open_location(cfg.output.path, cfg.output.s3)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        # The model is used by one shard at a time (the lock). The Ray actor runs one shard at a time:
        # two at once would also need `_running` per shard and the driver's blame logic tested for it.
        self._compute = threading.Lock()
        self._running: tuple[int, int, ShardSink] | None = None  # (shard, attempt, sink) while run() works
        self._tries = 0  # images sampled under the gate in the running shard (progress)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "host": socket.gethostname(), "pid": os.getpid(),
                "device": str(self.device), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "torch_threads": torch.get_num_threads()}

    # ------------------------------------------------------------------ one shard
    def run(self, spec: ShardSpec, attempt: int = 1) -> ShardStats:
        totals = {"sample_s": 0.0, "unet_evals": 0, "ae_evals": 0}
        try:
            with ShardSink(self.location, spec, self.cfg.output.image_format, self.cfg.output.quality,
                           attempt, gated=bool(self.rules)) as sink, self._compute:
                t0 = time.perf_counter()
                self._running = (spec.shard_id, attempt, sink)
                self._tries = 0
                rows = self._valid_rows(spec, sink)
                gate = self._run_gated(rows, sink, totals) if self.rules else self._run_plain(rows, sink, totals)
                faults.hit("before_commit", spec.name)
                sink.set_stats(wall_s=time.perf_counter() - t0, sample_s=totals["sample_s"],
                               unet_evals=totals["unet_evals"], ae_evals=totals["ae_evals"], worker=self.name,
                               **({"gate": gate} if gate else {}))
        except AlreadyCommitted:  # a duplicate attempt: the committed one is the truth
            return read_stats(self.location, spec.shard_id)
        finally:
            self._running = None
        faults.hit("after_commit", spec.name)
        return sink.stats

    def _valid_rows(self, spec: ShardSpec, sink: ShardSink) -> Iterator[PromptRecord]:
        """The shard's rows that can be sampled; the others go to the sink as recorded rejections."""
        for batch in read_shard(spec, self.cfg.input, self.cfg.sampler.batch_size, self.model.tokenizer):
            for item in batch:
                item = self._check_subjects(item)
                if isinstance(item, RowOutcome):
                    sink.write(item)
                else:
                    yield item

    def _run_plain(self, rows: Iterator[PromptRecord], sink: ShardSink, totals: dict) -> None:
        """Without a gate: micro-batches of sampler.batch_size rows, each row one sample (or group)."""
        bs = self.cfg.sampler.batch_size
        pending: list[PromptRecord] = []  # valid rows wait until a full micro-batch
        for record in rows:
            pending.append(record)
            if len(pending) >= bs:
                for item in self.process(pending, totals):
                    sink.write(item)
                pending = []
        for item in self.process(pending, totals) if pending else []:
            sink.write(item)

    # ------------------------------------------------------------------ the quality gate
    def _run_gated(self, rows: Iterator[PromptRecord], sink: ShardSink, totals: dict) -> dict[str, Any]:
        """Every image a row asks for is tried until it passes the rules or gate.tries are spent (the
        policy: pipeline/gate/policy.py); each row is written once all its images are over. Returns
        the shard's gate figures."""
        g, cfg = self.cfg.gate, self.cfg
        fig = gate_figures.new_figures([r.text for r in self.rules], g.tries, 2 * cfg.sampler.steps)
        methods, bs = run_methods(cfg), cfg.sampler.batch_size
        slots = self._slots()
        queues = {(m, i): deque() for m in methods for i in range(len(self.samplers[m]))}  # fixed order
        open_rows: dict[int, tuple[PromptRecord, list[list]]] = {}  # row -> (record, per slot its tries)

        def pump(final: bool) -> None:
            while True:
                key = next((k for k, q in queues.items() if len(q) >= bs), None)
                if key is None and final:
                    key = next((k for k, q in queues.items() if q), None)
                if key is None:
                    return
                q = queues[key]
                chunk = [q.popleft() for _ in range(min(bs, len(q)))]
                for job, t in zip(chunk, self._gated_batch(chunk, self.samplers[key[0]][key[1]], totals)):
                    record, tries = open_rows[job.record.row]
                    tries[job.slot].append(t)
                    gate_figures.count_try(fig, job.try_, t[1].get("failed") if "error" not in t[1] else None)
                    self._tries += 1
                    if again(t[1], g.tries):
                        n = job.try_ + 1
                        seed = try_seed(cfg.seed, record.prompt_id, job.candidate, record.seed, n)
                        queues[(job.method, sampler_index(n, len(g.escalate)))].append(
                            replace(job, seed=seed, try_=n))
                    elif sum(len(ts) and not again(ts[-1][1], g.tries) for ts in tries) == len(tries):
                        sink.write(self._gated_row(*open_rows.pop(job.record.row), fig))

        for record in rows:
            open_rows[record.row] = (record, [[] for _ in slots])
            for n, (m, c) in enumerate(slots):
                queues[(m, 0)].append(_Job(record, c, m, try_seed(cfg.seed, record.prompt_id, c, record.seed, 1), 1, n))
            pump(final=False)
        pump(final=True)
        fig["unet_evals"], fig["ae_evals"] = totals["unet_evals"], totals["ae_evals"]
        return fig

    def _gated_batch(self, chunk: list[_Job], s: Any, totals: dict) -> list[tuple[Any, dict]]:
        """Sample and score one batch of tries: per try (its result, or None once the image is not
        needed any more; its record: seed, method, scores, the rules it failed)."""
        results: dict[int, Generated | str] = {}
        self._generate(chunk, list(range(len(chunk))), s, results, totals)
        self._score(chunk, results)
        keep = self.cfg.gate.keep_rejected or self.cfg.gate.on_fail == "best"
        out = []
        for i, job in enumerate(chunk):
            res = results[i]
            if isinstance(res, str):
                out.append((None, {"try": job.try_, "seed": job.seed, "method": s.method, "error": res}))
                continue
            m = res.metadata
            bad = failed(self.rules, m.get("scores"))
            out.append((res if keep or not bad else None,
                        {"try": job.try_, "seed": m["seed"], "method": m["method"], "scores": m.get("scores") or {},
                         "failed": bad, "unet_evals": m["unet_evals"], "ae_evals": m["ae_evals"]}))
        return out

    def _gated_row(self, r: PromptRecord, tries: list[list[tuple[Any, dict]]], fig: dict) -> Sample | RowOutcome:
        """A row whose images are all over: a sample, a rejection with reason gate, or a failure."""
        v = verdict(self.rules, self.cfg.gate.on_fail, [[meta for _, meta in ts] for ts in tries])
        gate_figures.count_row(fig, v.end)
        if v.end in ("failed", "dropped"):
            info = v.records[0] if len(v.records) == 1 else {"candidates": v.records}
            return RowOutcome(r.key, r.row, r.prompt_id, FAILED if v.end == "failed" else REJECTED, v.reason,
                              gate=info)
        gens = [ts[k][0] for ts, k in zip(tries, v.chosen)]
        for gen, rec in zip(gens, v.records):
            gen.metadata["gate"] = rec
        jobs = [_Job(r, c, m, gen.metadata["seed"]) for (m, c), gen in zip(self._slots(), gens)]
        sample = self._sample(r, jobs, gens)
        if self.cfg.gate.keep_rejected:  # a plain sample (config_checks): its other tries' images, by try
            from PIL import Image

            sample.extra_images.update({f"try{meta['try']}": Image.fromarray(gen.image.numpy())
                                        for k, (gen, meta) in enumerate(tries[0]) if k != v.chosen[0]})
        return sample

    def _slots(self) -> list[tuple[str, int]]:
        """The images a row asks for: (method, candidate), in group order."""
        return [(m, c) for m in run_methods(self.cfg) for c in range(self.cfg.preference.candidates)]

    def progress(self) -> dict[str, int] | None:
        """How far the running shard is, asked from another thread (the Ray actor's status group)."""
        running = self._running
        if running is None:
            return None
        rows, samples = running[2].written()
        now = {"shard": running[0], "attempt": running[1], "rows": rows, "samples": samples}
        if self.rules:
            now["tries"] = self._tries
        return now

    def _check_subjects(self, item: PromptRecord | RowOutcome) -> PromptRecord | RowOutcome:
        """With Attend-and-Excite (in any try), a row whose subject words are not among its prompt's
        tokens is a recorded rejection (not a failed batch)."""
        if isinstance(item, RowOutcome):
            return item
        for s in self._ae:
            _, _, error = row_subjects(self.model.tokenizer, item.prompt, item.subjects, s.attend_excite.subjects)
            if error:
                return RowOutcome(item.key, item.row, item.prompt_id, REJECTED, error)
        return item

    # ------------------------------------------------------------------ records -> samples
    def process(self, records: list[PromptRecord], totals: dict) -> list[Sample | RowOutcome]:
        """Generate, score and group the images of a micro-batch of records."""
        pref = self.cfg.preference
        methods = run_methods(self.cfg)
        jobs = [_Job(r, c, m, row_seed(self.cfg.seed, r.prompt_id, c, r.seed))
                for r in records for m in methods for c in range(pref.candidates)]
        results: dict[int, Generated | str] = {}  # job index -> result or error
        for method in methods:
            idx = [i for i, j in enumerate(jobs) if j.method == method]
            bs = self.cfg.sampler.batch_size
            for start in range(0, len(idx), bs):
                chunk = idx[start:start + bs]
                self._generate(jobs, chunk, self.samplers[method][0], results, totals)
        self._score(jobs, results)
        out: list[Sample | RowOutcome] = []
        per_record = len(methods) * pref.candidates
        for n, r in enumerate(records):
            mine = range(n * per_record, (n + 1) * per_record)
            errors = [results[i] for i in mine if isinstance(results[i], str)]
            if errors:
                out.append(RowOutcome(r.key, r.row, r.prompt_id, FAILED, "; ".join(sorted(set(errors)))))
            else:
                out.append(self._sample(r, [jobs[i] for i in mine], [results[i] for i in mine]))
        return out

    def _generate(self, jobs: list[_Job], chunk: list[int], s: Any, results: dict, totals: dict) -> None:
        """Sample a chunk with sampler config `s`; split it on out-of-memory; resample non-finite results."""
        reqs = [SampleRequest(jobs[i].record.prompt, jobs[i].seed, jobs[i].record.negative_prompt,
                              jobs[i].record.subjects) for i in chunk]
        oom = None
        try:
            faults.hit("sample", ",".join(jobs[i].record.key for i in chunk))
            gens, t = generate_batch(self.model, reqs, s, self.captioner)
        except Exception as e:
            if not faults.is_oom(e):
                raise
            oom = str(e)  # only the text: the traceback (and the batch's tensors) go with the handler
        if oom is not None:  # out of the handler: the failed batch's memory can be freed before the halves
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(chunk) > self.cfg.sampler.min_batch_size and len(chunk) > 1:
                half = len(chunk) // 2
                log.warning("out of memory at batch %d: splitting (%s)", len(chunk), oom)
                self._generate(jobs, chunk[:half], s, results, totals)
                self._generate(jobs, chunk[half:], s, results, totals)
                return
            for i in chunk:
                results[i] = f"out of memory at batch size {len(chunk)}: {oom}"
            return
        totals["sample_s"] += t.sample_s + t.decode_s + t.caption_s
        totals["unet_evals"] += t.evals
        totals["ae_evals"] += t.ae_evals
        for i, g in zip(chunk, gens):
            if faults.hit("nonfinite", jobs[i].record.key):
                g.latents[:] = float("nan")
            results[i] = g if g.finite else self._resample(jobs[i], s, totals)

    def _resample(self, job: _Job, s, totals: dict) -> Generated | str:
        """A NaN/inf result is never written; per policy resample with a derived seed or fail."""
        if s.nonfinite == "fail":
            return "non-finite latents (sampler.nonfinite=fail)"
        for attempt in range(1, s.nonfinite_retries + 1):
            seed = retry_seed(job.seed, attempt)
            gens, t = generate_batch(self.model, [SampleRequest(job.record.prompt, seed, job.record.negative_prompt,
                                                                job.record.subjects)], s, self.captioner)
            totals["unet_evals"] += t.evals
            totals["ae_evals"] += t.ae_evals
            if gens[0].finite and not faults.hit("nonfinite", f"{job.record.key}/retry{attempt}"):
                gens[0].metadata["resampled"] = {"original_seed": job.seed, "attempt": attempt}
                return gens[0]
        return f"non-finite latents after {s.nonfinite_retries} resamples"

    def _score(self, jobs: list[_Job], results: dict) -> None:
        if self.scorers is None:
            return
        ok = [i for i in sorted(results) if not isinstance(results[i], str)]
        if not ok:
            return
        # every scorer gets the row's data (input.extra_columns) beside its prompt; judges such as geneval read it
        scored = self.scorers.score([results[i].image.numpy() for i in ok], [jobs[i].record.prompt for i in ok],
                                    [jobs[i].record.extra for i in ok])
        for i, result in zip(ok, scored):
            scores, errors = result
            results[i].metadata["scores"] = scores
            if errors:
                results[i].metadata["score_errors"] = errors
            if result.details:  # what a judge saw, e.g. geneval's objects, boxes and colours
                results[i].metadata["score_details"] = result.details

    def _sample(self, r: PromptRecord, jobs: list[_Job], gens: list[Generated]) -> Sample:
        from PIL import Image

        common = {"key": r.key, "prompt": r.prompt, "prompt_id": r.prompt_id, "run_seed": self.cfg.seed}
        if r.extra:
            common["extra"] = r.extra
        if r.truncated:
            common["prompt_truncated"] = True
        images = [Image.fromarray(g.image.numpy()) for g in gens]
        if len(gens) == 1:
            meta = {**common, **gens[0].metadata, "candidate": jobs[0].candidate}
            extra = {"neg": Image.fromarray(gens[0].negative_image.numpy())} \
                if gens[0].negative_image is not None else {}
            return Sample(r.key, r.row, r.prompt_id, r.prompt, images, meta, extra_images=extra)
        cands = [{**g.metadata, "candidate": j.candidate, "method": j.method} for j, g in zip(jobs, gens)]
        pref = self.cfg.preference
        scores = [c.get("scores", {}).get(pref.scorer) for c in cands]
        pair = pick_pair(scores, pref.margin, pref.ties)
        meta = {**common, "candidates": cands, "preference": {
            "scorer": pref.scorer, "margin": pref.margin, "ties": pref.ties,
            "chosen": pair[0] if pair else None, "rejected": pair[1] if pair else None}}
        return Sample(r.key, r.row, r.prompt_id, r.prompt, images, meta)
