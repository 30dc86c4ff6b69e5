"""Model loading and per-architecture adapters."""
from .adapters import ARCHITECTURES, ModelAdapter
from .loading import LoadedModel, cache_dir, load_model

__all__ = ["ARCHITECTURES", "LoadedModel", "ModelAdapter", "cache_dir", "load_model"]
