"""The one exception type for bad input to the shard builder.

The CLI turns a ``ShardsError`` into a single message and exit code 2 (no traceback):
it means "your input or arguments are wrong", never "the program has a bug".
"""

from __future__ import annotations


class ShardsError(Exception):
    """Bad input (protocol, audio, arguments, output directory): a user-facing message."""
