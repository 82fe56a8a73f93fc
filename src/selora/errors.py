"""Errors that mean "bad input", not "bug": the CLI prints their message and exits 2."""


class SeloraError(Exception):
    """Base of every user-facing error; its message says what is wrong and what to do."""


class ConfigError(SeloraError, ValueError):
    """A params file or override that cannot be used; the message names the key."""


class OutputError(SeloraError, OSError):
    """An output location that cannot be written."""


class DatasetFormatError(SeloraError, ValueError):
    """Input data (raw or prepared) that does not have the expected files or fields."""


class MissingWeightsError(SeloraError, FileNotFoundError):
    """Model weights that are not on disk; the message says which file to put where."""


class AssetUnavailableError(SeloraError, FileNotFoundError):
    """A file read out of a package-index wheel that is neither cached nor downloadable; the message
    says which wheel to put where."""
