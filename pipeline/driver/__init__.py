"""The driver: plan and resume, retry/blame/quarantine policy, the Ray executor, progress, summary."""
