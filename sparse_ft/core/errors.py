"""Error types every layer raises. A leaf module: it imports nothing of the package."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work. The message starts with the offending key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class StorageError(OSError):
    """A file could not be written because its disk (or quota) is full; the message names the file."""

    def __init__(self, path: str, message: str):
        self.path = str(path)
        super().__init__(f"{path}: {message}")
