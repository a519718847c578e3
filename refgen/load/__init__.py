"""Loading a verified checkpoint: one verifier, two strategies, one planner choosing.

- :mod:`refgen.load.files`: safetensors files read in place (header checks, chunked casts);
- :mod:`refgen.load.verify`: the verifier, hashing every locked file on its own thread;
- :mod:`refgen.load.model`: the model class and the check that a checkpoint fits it exactly;
- :mod:`refgen.load.memory`: the in-memory strategy (``from_pretrained`` from a state dict);
- :mod:`refgen.load.stream`: the streamed strategy (each layer's weights resident while it runs);
- :mod:`refgen.load.plan`: which strategy a run uses, and the calls that run it.

The modules import each other in that order only; nothing here imports this package's own
``__init__`` (it re-exports nothing), so there is no cycle to close.
"""
