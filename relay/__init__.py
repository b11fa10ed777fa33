"""The relay: moves committed outbox rows to their tier queues with publisher confirms."""

from tierbox.relay.relay import Relay

__all__ = ["Relay"]
