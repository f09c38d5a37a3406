"""The one exception type of the memory package."""

from __future__ import annotations


class MemoryStoreError(ValueError):
    """A memory file or a value bound for one breaks the schema.

    It subclasses ValueError so callers that already treat bad input as a ValueError (the CLI turns those
    into one clear line and exit code 2) need no special case; the message names the file and the rule id.
    """
