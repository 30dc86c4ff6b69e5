"""hyperedit: edit the facts stored in transformer language models, and measure the result."""
from .version import __version__  # noqa: F401

from .delta import EditDelta  # noqa: E402
from .editors import Editor, SequentialState, TrajectoryTrainable, editor_entry, editor_names, get_editor  # noqa: E402
from .errors import DeltaMismatchError, HyperEditError, InputError, ModelLoadError  # noqa: E402
from .hooks import capture  # noqa: E402
from .ledger import Ledger  # noqa: E402
from .models import LoadedModel, ModelAdapter, load_model  # noqa: E402
from .requests import EditRequest, LocalityPrompt  # noqa: E402

__all__ = [
    "DeltaMismatchError", "EditDelta", "EditRequest", "Editor", "HyperEditError", "InputError", "Ledger",
    "LoadedModel", "LocalityPrompt", "ModelAdapter", "ModelLoadError", "SequentialState", "TrajectoryTrainable",
    "__version__", "capture", "editor_entry", "editor_names", "get_editor", "load_model",
]
