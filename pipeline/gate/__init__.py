"""The quality gate: a dataset keeps only the images whose scores pass the rules (`gate:` config).

rules.py: the rule grammar and the verdict on one image's scores; escalate.py: the sampler of each
try (gate.escalate); figures.py: a shard's gate figures (acceptance per try, failures per rule,
rows dropped, cost per kept sample), their merge, and the dry-run's expected cost. All plain
Python without torch; the worker's shard loop (pipeline/worker.py) carries them out.
"""
