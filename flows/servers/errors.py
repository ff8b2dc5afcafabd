"""The one error the servers commands raise for something the user can fix; the CLI prints it as one line."""

from __future__ import annotations


class ServersError(RuntimeError):
    """Bad input or a server that would not start: the message names the culprit and the fix (exit 2)."""
