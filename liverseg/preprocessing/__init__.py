"""Per-case preprocessing primitives: crop, resample, normalise, sampler locations.

Each module does one job on in-memory arrays (images ``(c, z, y, x)``, labels ``(z, y, x)``,
spacings ``(z, y, x)`` in mm); the dataset-level run that reads ``plans.json`` composes them.
"""
