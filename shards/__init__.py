"""Shard builder behind the ``sccl-shards`` console script (also ``python -m shards``).

Kept import-light on purpose: ``sccl-shards --help`` must not pull in numpy, soundfile or
torch. The working modules: ``protocols`` (protocol parsers), ``plan`` (which file goes into
which shard), ``build`` (resume, parallel shard writing, manifest), ``writer`` (one tar shard),
``pool`` (the worker pool), ``outdir`` (what a build owns in --out), ``verify`` (verify +
info), ``errors``, ``cli``, and ``synth*`` (the synthetic corpus).
"""

from __future__ import annotations

__version__ = "0.2.0"
