"""The HTTP API: the only package that imports litestar. ``create_app(broker)`` builds it."""

from broker.api.app import create_app

__all__ = ["create_app"]
