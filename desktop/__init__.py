"""EyeTriage desktop application (PySide6)."""
