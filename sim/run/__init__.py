"""One run: the bone-vein coupling, the pipeline that wires the stages, and the run's results."""
