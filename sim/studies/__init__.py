"""Many runs: parameter sweeps, executors, the resumable ledger, virtual cohorts and their statistics."""

MAX_WORKERS = 1024  # worker processes a study may ask for (a file's executor.workers, the CLI's --workers)
