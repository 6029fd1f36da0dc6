"""Data: where files live (local/S3), prompts in (source), committed shards out (sink), reading them back."""
