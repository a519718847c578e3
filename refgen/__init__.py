"""refgen: reproducible reference ("oracle") files for model reimplementations.

Importing the package must not import torch: the determinism profile has to be in the
environment before torch loads its kernels (see :mod:`refgen.determinism`).
"""

__version__ = "0.1.0"
