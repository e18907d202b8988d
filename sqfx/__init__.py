"""sqfx: sparse + int8 linear layers for PyTorch on the CPU, traceable by torch.compile and torch.export."""
from . import ops  # noqa: F401  (loads the library and registers the fake kernel first)
from . import reference
from .format import FORMAT_VERSION, PackedFormatError, PackedLinear, pack
from .nn import SparseQuantLinear

__all__ = ["FORMAT_VERSION", "PackedFormatError", "PackedLinear", "SparseQuantLinear", "pack", "reference"]
__version__ = "0.1.0"
