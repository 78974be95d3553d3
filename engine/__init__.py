"""EyeTriage engine: everything that computes. No Qt here."""

__version__ = "0.1.0"
