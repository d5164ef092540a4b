"""Device side, and exactly what ships to a device: audio front end, model
format, int8 runtime, apply, bundle reader, store and TUF clients, update
planning, agent.

Nothing in this package imports another package of the project (`diffing`,
`packager`, `cli`, `demo`), not even inside a function: the server imports
this package, never the reverse. `tests/test_layering.py` enforces that.
"""
