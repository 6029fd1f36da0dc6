"""Mergeable per-shard summaries: what the dataset card and the index need from a shard, in a size
that does not grow with the shard (pipeline/summaries/shard.py), merged in an order fixed by shard
ids (tree.py). Distributions are `Series` (series.py): moments, a fixed-bin histogram (histogram.py)
and a quantile sketch with a stated rank error (sketch.py)."""
