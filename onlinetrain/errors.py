"""The one base class of every onlinetrain error, and the transport errors (the floor of the house).

Every library error derives from `OTError`; the CLI turns any `OTError` into a one-line message
(`click.ClickException`), so no library error reaches a user as a traceback. Each error carries the
offending value as attributes where it has one (e.g. `ChannelError.name`).

    from onlinetrain.errors import OTError, ChannelError
    try:
        ...
    except OTError as e:
        print(f"error: {e}")

This module imports nothing from onlinetrain: every other module may import it.
"""
from __future__ import annotations


class OTError(Exception):
    """Base of every onlinetrain error; its message names the bad value and the fix."""


class ChannelError(OTError, RuntimeError):
    """Base of channel (transport) errors; `name` is the channel."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


class Empty(ChannelError):
    """Nothing arrived within the timeout."""


class Full(ChannelError):
    """The channel had no room within the timeout."""


class ChannelNotFound(ChannelError):
    """No channel of that name exists (yet)."""


class ChannelInUse(ChannelError):
    """The channel is held by another live consumer or owner."""


class ConsumerGone(ChannelError):
    """The consumer of the channel has died or closed it."""
