"""Failed upstream connects in the log: at most one warning per host per interval, with a count.

Without it an operator sees a refusing or overloaded host only in the access log (`UF`), or,
from the TCP proxy, as a line per failure, thousands a second in a burst. Here a host's first
failure is logged at once; later ones are counted, and the first failure after `INTERVAL`
logs one line with how many failed since the previous line and the latest reason:

    event=upstream.connect_failed cluster=api host=10.0.0.7:8000 reason=timeout failures=37 since=10.2s

A burst that ends inside the interval is counted in the host's stats (`cx_connect_fail`) and
in the next line, whenever that comes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.log import Throttle, get_logger

if TYPE_CHECKING:
    from proxy.upstream.host import Host

log = get_logger("upstream")

INTERVAL = 10.0  # seconds between two lines about one host (Throttle's default)

__all__ = ["INTERVAL", "Throttle", "connect_failed"]


def connect_failed(host: Host, cluster: str, reason: str, now: float, **fields: Any) -> None:
    """Log a failed connect to `host` (a ConnectFailed's reason), unless this host's line for
    the current interval is out already. `fields` (the listener) go into the line as they are."""
    count, since = host.connect_log.due(now)
    if count:
        log.warning("upstream.connect_failed", cluster=cluster, host=str(host.address), reason=reason, failures=count, **since, **fields)
