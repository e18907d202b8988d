"""sqfx: sparse + int8 linear layers for PyTorch on the CPU, traceable by torch.compile and torch.export."""
from . import ops  # noqa: F401  (loads the library and registers the fake kernel first)
from . import reference
from .format import FORMAT_VERSION, PackedFormatError, PackedLinear, pack
from .nn import SparseQuantLinear
from .config import SparseQuantConfig
from .lowering import ConversionReport
from .convert import prepare_and_convert
from . import calibrate
from .compile_backend import backend
from .artifacts import aoti_compile, export, load, load_package, save
# sqfx.sparsify is the package and, callable, its entry point: `sqfx.sparsify(model, data, config)`.
from . import sparsify  # noqa: E402
from .sparsify import RecoveryConfig, SparsifyConfig  # noqa: E402

__all__ = ["FORMAT_VERSION", "PackedFormatError", "PackedLinear", "SparseQuantLinear", "pack", "reference",
           "SparseQuantConfig", "ConversionReport", "prepare_and_convert",
           "backend", "export", "save", "load", "aoti_compile", "load_package",
           "sparsify", "SparsifyConfig", "RecoveryConfig"]
__version__ = "0.1.0"
