"""One job's life: preflight checks, the run loop, its checkpoints, loggers, progress and record."""
