"""pce-sim benchmark cases, run by ``pce-sim bench`` (see :mod:`sim.bench`)."""
