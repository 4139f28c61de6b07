"""Patient-specific anatomy from imaging: CT volumes and label maps -> pce-sim's stage objects.

``ct_image`` reads NIfTI files into the patient frame, ``ct_bone`` turns a segmented vertebra and
its Hounsfield units into a :class:`~sim.core.grid.BoneGrid`, ``ct_vessels`` reads the IVC and
lung-lobe labels, and ``synthetic_ct`` writes a CT and label map of pce-sim's own parametric
vertebra (tests and the README example). Imports ``sim.core`` and ``sim.physics``.
"""
