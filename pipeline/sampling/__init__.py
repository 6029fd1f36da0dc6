"""Sampling: guidance rules (pure), the chains that run them, one record per method, batches."""
