"""pgrecovery's version (one place: the package, manifests and ``--version`` read it from here)."""

__version__ = "0.1.0"
