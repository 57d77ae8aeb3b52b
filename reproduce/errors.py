"""The package's user-facing errors, below every other module so that any module can raise them.

Both are printed by the CLI as one line with exit code 2 (`cli.main`); anything else is a bug or
an environment failure and prints one line with exit code 1.
"""


class ConfigError(ValueError):
    """A user mistake in the configuration or the command line."""


class DataError(RuntimeError):
    """The dataset is missing, unreadable or malformed (names the file and what would be valid)."""
