"""What a person or another program reads: VTK files for ParaView, fluoroscopy PNGs, the ParaView
standard view and report figures. Submodules are imported on demand (``vtk`` and ``matplotlib`` are
slow to import and a run that writes neither should not pay for them)."""
