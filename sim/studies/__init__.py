"""Many runs: parameter sweeps, executors, the resumable ledger, virtual cohorts and their statistics."""
