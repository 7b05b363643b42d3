"""Stores: where budgets, escalation receipts and the run index live.

``MemoryStore`` is per-process; ``SQLiteStore`` (the embedded default, under the data
directory) is shared safely by concurrent tasks and by processes on one machine.
"""

from agentlanes.stores.base import Store, StoredReceipt
from agentlanes.stores.memory import MemoryStore
from agentlanes.stores.sqlite import SQLiteStore

__all__ = ["MemoryStore", "SQLiteStore", "Store", "StoredReceipt"]
