"""Run outputs for other programs: VTK files for ParaView (:mod:`sim.io.vtk`) and PNG images
(:mod:`sim.io.images`). Submodules are imported on demand (``vtk`` and ``matplotlib`` are slow
to import and a run that writes neither should not pay for them)."""
