"""The package's version, in a module of its own: the command and the daemon name it without depending on
the package root, which re-exports the quilt3-compatible API."""

__version__ = "0.1.0"
