"""The broker's use cases, free of HTTP, and their assembly. See :mod:`broker.service.broker`
for the map; :func:`build_broker` (in :mod:`broker.service.wiring`) builds one from settings."""

from broker.service.broker import Broker
from broker.service.callers import DEV_APPROVER, Client
from broker.service.issuance import Issued
from broker.service.wiring import build_broker

__all__ = ["DEV_APPROVER", "Broker", "Client", "Issued", "build_broker"]
