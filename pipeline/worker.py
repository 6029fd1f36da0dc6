"""ShardWorker: one ShardSpec in, one committed shard out. A plain class; Ray wraps it elsewhere.

Models load once in __init__. `run(spec)` streams the shard's rows in micro-batches through the
sampler (and scorers), writes every row to the ShardSink (a sample, or a recorded rejection or
failure) and returns small stats — never images.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from pipeline import faults
from pipeline.config import Config
from pipeline.data.layout import read_stats
from pipeline.data.sink import AlreadyCommitted, ShardSink
from pipeline.data.source import read_shard
from pipeline.data.storage import open_location
from pipeline.models.device import resolve_device
from pipeline.models.diffusion import load_model
from pipeline.records import FAILED, REJECTED, PromptRecord, RowOutcome, Sample, ShardSpec, ShardStats
from pipeline.sampling.attend_excite import check_resolution, row_subjects
from pipeline.sampling.batch import Generated, SampleRequest, generate_batch
from pipeline.sampling.methods import needs_captioner, run_methods
from pipeline.scoring.preference import pick_pair
from pipeline.seeding import retry_seed, row_seed

log = logging.getLogger(__name__)


@dataclass
class _Job:
    """One image to make: a record, a candidate index and the method config to use."""

    record: PromptRecord
    candidate: int
    method: str
    seed: int


class ShardWorker:
    def __init__(self, cfg: Config, captioner: Any = None, scorers: Any = None, name: str = "",
                 model: Any = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.model.device)
        self.model = model or load_model(cfg.model, self.device)  # tests and jobs may share one
        if cfg.sampler.attend_excite.enabled:  # a map size this UNet lacks fails here, not in every batch
            check_resolution(self.model, cfg.sampler)
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

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "host": socket.gethostname(), "pid": os.getpid(),
                "device": str(self.device), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "torch_threads": torch.get_num_threads()}

    # ------------------------------------------------------------------ one shard
    def run(self, spec: ShardSpec, attempt: int = 1) -> ShardStats:
        totals = {"sample_s": 0.0, "unet_evals": 0, "ae_evals": 0}
        try:
            with ShardSink(self.location, spec, self.cfg.output.image_format, self.cfg.output.quality,
                           attempt) as sink, self._compute:
                t0 = time.perf_counter()
                self._running = (spec.shard_id, attempt, sink)
                bs = self.cfg.sampler.batch_size
                pending: list[PromptRecord] = []  # valid rows wait until a full micro-batch
                for batch in read_shard(spec, self.cfg.input, bs, self.model.tokenizer):
                    for item in batch:
                        item = self._check_subjects(item)
                        if isinstance(item, RowOutcome):
                            sink.write(item)
                        else:
                            pending.append(item)
                    while len(pending) >= bs:
                        for item in self.process(pending[:bs], totals):
                            sink.write(item)
                        pending = pending[bs:]
                for item in self.process(pending, totals) if pending else []:
                    sink.write(item)
                faults.hit("before_commit", spec.name)
                sink.set_stats(wall_s=time.perf_counter() - t0, sample_s=totals["sample_s"],
                               unet_evals=totals["unet_evals"], ae_evals=totals["ae_evals"], worker=self.name)
        except AlreadyCommitted:  # a duplicate attempt: the committed one is the truth
            return read_stats(self.location, spec.shard_id)
        finally:
            self._running = None
        faults.hit("after_commit", spec.name)
        return sink.stats

    def progress(self) -> dict[str, int] | None:
        """How far the running shard is, asked from another thread (the Ray actor's status group)."""
        running = self._running
        if running is None:
            return None
        rows, samples = running[2].written()
        return {"shard": running[0], "attempt": running[1], "rows": rows, "samples": samples}

    def _check_subjects(self, item: PromptRecord | RowOutcome) -> PromptRecord | RowOutcome:
        """With Attend-and-Excite, a row whose subject words are not among its prompt's tokens is a
        recorded rejection (not a failed batch)."""
        ae = self.cfg.sampler.attend_excite
        if not ae.enabled or isinstance(item, RowOutcome):
            return item
        _, _, error = row_subjects(self.model.tokenizer, item.prompt, item.subjects, ae.subjects)
        return RowOutcome(item.key, item.row, item.prompt_id, REJECTED, error) if error else item

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
                self._generate(jobs, chunk, method, results, totals)
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

    def _generate(self, jobs: list[_Job], chunk: list[int], method: str, results: dict, totals: dict) -> None:
        """Sample a chunk; split it on out-of-memory; resample non-finite results."""
        s = replace(self.cfg.sampler, method=method)
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
                self._generate(jobs, chunk[:half], method, results, totals)
                self._generate(jobs, chunk[half:], method, results, totals)
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
