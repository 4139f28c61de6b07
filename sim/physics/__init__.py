"""The physical models, in the order of the chain: cement rheology, vertebral body and needle,
pressure and cement transport in the bone, the injection solver, the venous network, cement columns
in veins, fragmentation, fragment transport and the pulmonary arterial tree, fluoroscopy.
Each module states its equations and sources; none imports ``sim.run``, ``sim.studies`` or
``sim.output``."""
