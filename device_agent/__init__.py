"""Device side: audio front end, model format, int8 runtime, apply, agent.

Nothing in this package may import `diffing` (training code): the device
ships without it. `tests/test_layering.py` enforces that.
"""
