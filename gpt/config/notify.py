"""The `notify:` section: where a pipeline run reports that it failed (or finished), through apprise.

    notify:
      urls: ["json://127.0.0.1:8000/hook", "slack://TokenA/TokenB/TokenC/#runs", "mailto://user:pass@example.org"]
      on: [failure, finish]

Observation only: it changes no stage and no key. The URLs are credentials (a webhook's path is its
token), so they are `secret`: logged and passed on as `<scheme>://***` (gpt/config/secrets.py).
Each URL is checked with apprise when the config loads; sending happens in flows/notify.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from gpt.config.fields import FieldError, Section, observation
from gpt.config.secrets import mask_secret

NotifyOn = Literal["failure", "finish"]


def apprise_accepts(url: str) -> bool:
    """Whether apprise knows `url` as exactly one notification target (scheme and required parts).

    apprise logs a rejected URL with parts of its secret, so its logger is muted meanwhile.
    """
    import apprise

    log = logging.getLogger("apprise")
    was = log.disabled
    log.disabled = True
    try:
        targets = apprise.Apprise()
        return bool(targets.add(url)) and len(targets) == 1
    finally:
        log.disabled = was


@dataclass
class NotifyConfig(Section):
    """Who hears about a pipeline run: apprise URLs, and on which outcomes."""

    urls: list[str] = observation(
        None,
        "apprise URLs (json://host:port/path, slack://..., mailto://...); credentials, never logged in full",
        factory=list,
        secret=True,
    )
    on: list[NotifyOn] = observation(
        None,
        "when to send: failure (a stage failed; one message) and/or finish (headline metrics)",
        factory=lambda: ["failure"],
    )

    def check(self) -> None:
        for i, url in enumerate(self.urls):
            if not isinstance(url, str) or not url.strip() or not apprise_accepts(url):
                raise FieldError(
                    f"urls[{i}]",
                    f"({mask_secret(str(url))}) is not a notification URL apprise knows "
                    "(see https://github.com/caronc/apprise/wiki for the schemes and their parts)",
                )
        if len(set(self.on)) != len(self.on):
            raise FieldError("on", f"lists an outcome twice: {self.on}")
