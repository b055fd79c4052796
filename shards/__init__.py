"""Shard builder behind the ``sccl-shards`` console script (also ``python -m shards``).

Kept import-light on purpose: ``sccl-shards --help`` must not pull in numpy, soundfile or
torch. The working modules are ``protocols`` (protocol parsers), ``build`` (planning, resume,
parallel shard writing), ``verify`` (verify + info) and ``cli``.
"""

from __future__ import annotations

__version__ = "0.2.0"
