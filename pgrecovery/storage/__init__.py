"""Where backups live: `Repository` over any fsspec filesystem, and the write and retry machinery under it.

The only subpackage that talks to fsspec (layer 2: it imports only from the formats and base layers).
"""

from .._objects import ObjectWriter, StoredObject
from ._uploads import UnfinishedUpload
from .repository import (
    CHUNK,
    PART_SIZE,
    PROVIDER_EXTRAS,
    Capabilities,
    RetryPolicy,
    Storage,
    capabilities_of,
    is_transient,
)

__all__ = [
    "CHUNK",
    "PART_SIZE",
    "PROVIDER_EXTRAS",
    "Capabilities",
    "ObjectWriter",
    "RetryPolicy",
    "Storage",
    "StoredObject",
    "UnfinishedUpload",
    "capabilities_of",
    "is_transient",
]
