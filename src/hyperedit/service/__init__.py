"""The HTTP service: a model and its edit ledger behind a FastAPI app (``hyperedit serve``)."""
from .app import create_app
from .engine import Engine, ServiceConfig

__all__ = ["Engine", "ServiceConfig", "create_app"]
