"""The edit ledger: a managed, revertible history of the edits made to one base model."""
from .entry import LedgerEntry
from .ledger import EXPORT_MARKER, Ledger

__all__ = ["EXPORT_MARKER", "Ledger", "LedgerEntry"]
