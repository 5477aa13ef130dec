"""The DICOM node behind ``backmice serve``: receive series from a PACS or workstation, detect, send back.

* :mod:`.config`  settings (``configs/node.yaml``) and their validation
* :mod:`.scp`     the pynetdicom listener: caller policy, C-ECHO, durable C-STORE into the spool
* :mod:`.journal` the SQLite journal of series states
* :mod:`.worker`  ``process_series`` run in worker processes (detector, or the test pipeline)
* :mod:`.sender`  delivery by C-STORE or STOW-RS
* :mod:`.service` :class:`~.service.Node`, which ties them together

See ``docs/integration.md`` for routing series to the node and what comes back.
"""

from __future__ import annotations

from .config import NodeConfig, load_config

__all__ = ["NodeConfig", "load_config"]
