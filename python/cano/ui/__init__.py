"""``cano ui``: a local web page to watch and operate the runs of a store.

Install the extra (``pip install 'cano[ui]'``), then ``cano ui --store PATH|URL`` or, on a
redb file (locked by the process that owns it), ``Worker(store, flows, ui=8765)``.
:func:`create_app` is the ASGI application, for mounting elsewhere.
"""

from cano.ui._app import LOOPBACK_HOSTS, create_app
from cano.ui._serve import UiServer, check_host

__all__ = ["LOOPBACK_HOSTS", "UiServer", "check_host", "create_app"]
