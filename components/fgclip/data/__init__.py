"""The data components, one package each: recaption, detect, negatives, qc, finehard.

A component with pluggable backends has the same parts: `config.py` (its params section),
`interface.py` (the backend interface and the registry naming each backend's module),
`stage.py` (the resumable shard stage), `cli.py` (`fgclip <component>`) and `backends/`
(one module per backend, importing the interface, never imported by it).
"""
