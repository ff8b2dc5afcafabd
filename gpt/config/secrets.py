"""Credentials never leave the process: one place that redacts them, and one that brings them back.

A credential sits in a URL (`https://user:token@host/...`: the tracking URI, a `--store` URL, a
custom task's file, a corpus source) or is a whole config value (`notify.urls`: a Slack webhook's
path is its token; fields declared with `secret=True`). Everything gptflow records or shows gets
the redacted form: MLflow params and tags, Prefect flow parameters, logs, error lines, the files of
a stage directory (manifest, partial record, the pretrain worker's spec):

- `redact_url` / `redact_text`: `https://user:***@host/...` (a bare token: `https://***@host/...`);
- a secret field's value is shown as `<scheme>://***`;
- stage keys hash the URL *without* its credentials (`strip_credentials`): the content is pinned
  by the URL's `#sha256=` (or a revision), and two people with different tokens share the stage.

The real values travel only in memory and in the process environment: `GPTFLOW_SECRETS` holds
`{config path: real value}` (set by `export_secrets` before a flow starts, so Prefect's runner
subprocesses and stage workers inherit it), and `reveal_config` / `reveal_url` put the real values
back where a redacted form stands. The tracking URI and the store URL come from their own
environment variables (MLFLOW_TRACKING_URI, GPTFLOW_STORE) and are revealed the same way.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any, NamedTuple
from urllib.parse import unquote

from gpt.config.fields import ConfigError

SECRETS_ENV = "GPTFLOW_SECRETS"
REDACTED = "***"
# scheme://userinfo@ anywhere in a text; userinfo runs to the last '@' before the host's end
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#'\"<>\[\]]+)@")
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _redacted_userinfo(m: re.Match[str]) -> str:
    user, colon, _ = m["userinfo"].partition(":")
    return f"{m['scheme']}{user}:{REDACTED}@" if colon else f"{m['scheme']}{REDACTED}@"


def redact_url(url: str) -> str:
    """`url` with the password (or a bare token) of its userinfo replaced by `***`; unchanged without one."""
    return _USERINFO.sub(_redacted_userinfo, url, count=1)


def redact_text(text: str) -> str:
    """`text` with the credentials of every URL in it redacted (error messages, log lines, free text)."""
    return _USERINFO.sub(_redacted_userinfo, text) if "@" in text else text


def strip_credentials(text: str) -> str:
    """`text` with the userinfo of every URL in it removed: what a stage key hashes (credentials are
    not content, and differ between people)."""
    return _USERINFO.sub(lambda m: m["scheme"], text) if "@" in text else text


def has_credentials(text: str) -> bool:
    """Whether a URL in `text` carries userinfo (a user, password or token before the host)."""
    return "@" in text and _USERINFO.search(text) is not None


def mask_secret(value: str) -> str:
    """A secret field's shown form: only its scheme (`slack://***`), or `***`."""
    scheme, sep, _ = value.partition("://")
    return f"{scheme}://{REDACTED}" if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme) else REDACTED


def is_redacted(value: str) -> bool:
    """Whether `value` is a redacted form (it stands for a credential this process must reveal)."""
    return (
        f":{REDACTED}@" in value
        or f"://{REDACTED}@" in value
        or value.endswith(f"://{REDACTED}")
        or (value == REDACTED)
    )


def basic_auth(url: str) -> tuple[str, str | None]:
    """`url` without its userinfo, and the `Authorization: Basic` header value it stands for (None without one)."""
    m = _USERINFO.match(url)
    if m is None:
        return url, None
    user, _, password = m["userinfo"].partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return m["scheme"] + url[m.end() :], f"Basic {token}"


def redact_data(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with the credentials of every string and key redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


# --- the secrets of a config, by path --------------------------------------------------------------


class Secret(NamedTuple):
    """A config value holding a credential: where it is, its real value, and how it is shown."""

    path: str  # `corpus.source`, `tasks.reviews.train`, `notify.urls[0]`
    value: str
    secret: bool  # a value of a field declared `secret` (shown masked), else a URL with userinfo

    @property
    def shown(self) -> str:
        """How it is logged and passed on: masked (a secret field) or with its credentials redacted."""
        return mask_secret(self.value) if self.secret else redact_url(self.value)


def _strings(value: Any, path: str, secret: bool) -> Iterator[tuple[str, str, bool]]:
    """(path, string, in a secret field) for every string leaf of a config section."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _strings(getattr(value, f.name), _join(path, f.name), secret or bool(f.metadata.get("secret")))
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and not re.search(r"[.\[\]]", k):  # dotted keys (sweep.params) have no path
                yield from _strings(v, _join(path, k), secret)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]", secret)
    elif isinstance(value, str):
        yield path, value, secret


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def config_secrets(config: Any) -> list[Secret]:
    """The values of a config section (a dataclass) that hold credentials: URLs with userinfo, and
    every value of a field declared `secret`."""
    out = []
    for path, value, secret in _strings(config, "", False):
        if value and (secret or has_credentials(value)):
            out.append(Secret(path, value, secret))
    return out


def _parts(path: str) -> list[str | int]:
    return [int(index) if index else name for name, index in _PATH_PART.findall(path)]


def _get(data: Any, path: str) -> Any:
    for part in _parts(path):
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _set(data: Any, path: str, value: str) -> None:
    *parents, last = _parts(path)
    for part in parents:
        data = data[part]
    data[last] = value


def redacted_config(config: Any) -> dict[str, Any]:
    """The config as a plain dict (what YAML holds) with every credential in its shown form: what is
    logged to MLflow and passed to Prefect as a flow parameter."""
    data = dataclasses.asdict(config)
    for s in config_secrets(config):
        _set(data, s.path, s.shown)
    return data


def public_config(config: Any) -> dict[str, Any]:
    """The config as a plain dict with credentials stripped from URLs and secret fields masked: what a
    config hash covers (the same for everyone whatever their token)."""
    data = dataclasses.asdict(config)
    for s in config_secrets(config):
        _set(data, s.path, s.shown if s.secret else strip_credentials(s.value))
    return data


def _environment() -> dict[str, str]:
    """`GPTFLOW_SECRETS` as {path: real value}; {} when unset or unreadable."""
    try:
        found = json.loads(os.environ.get(SECRETS_ENV) or "{}")
    except json.JSONDecodeError:
        return {}
    return {str(k): v for k, v in found.items() if isinstance(v, str)} if isinstance(found, dict) else {}


def export_secrets(config: Any) -> None:
    """Put the config's real credentials in this process's environment (`GPTFLOW_SECRETS`), where the flow
    reading the redacted parameters, and every process it starts, finds them; nothing is written to disk."""
    found = {s.path: s.value for s in config_secrets(config)}
    if found:
        os.environ[SECRETS_ENV] = json.dumps({**_environment(), **found})


def reveal_config(data: dict[str, Any]) -> dict[str, Any]:
    """A redacted config dict with the real values from `GPTFLOW_SECRETS` back in place.

    A value is replaced only at its path and where its redacted form stands, so another config's
    credentials are not mixed in (a masked secret field keeps only its scheme: at the same path, one
    of the same scheme is taken for it). Raises ConfigError naming the key when a redacted value has
    no real one here.
    """
    out = copy.deepcopy(data)
    for path, real in _environment().items():
        current = _get(out, path)
        if isinstance(current, str) and current != real and current in (redact_url(real), mask_secret(real)):
            _set(out, path, real)
    for path, value, _ in _strings(out, "", False):
        if is_redacted(value):
            raise ConfigError(
                f"config key '{path}' holds a redacted credential ({value}) and {SECRETS_ENV} has no value for "
                "it in this process; start the run with gptflow run/serve/sweep, or set "
                f'{SECRETS_ENV}=\'{{"{path}": "<the real value>"}}\' in the environment of the process running the flow'
            )
    return out


def reveal_url(value: str) -> str:
    """The real URL a redacted one stands for (the tracking URI, the store URL, a config secret), by its
    redacted form; `value` itself when it is not redacted or no real one is known here."""
    if not is_redacted(value):
        return value
    candidates = [os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("GPTFLOW_STORE"), *_environment().values()]
    for real in candidates:
        if real and real != value and redact_url(real) == value:
            return real
    return value


def reveal_data(value: Any) -> Any:
    """A JSON-like value with every redacted URL string replaced by its real one (`reveal_url`)."""
    if isinstance(value, str):
        return reveal_url(value)
    if isinstance(value, dict):
        return {k: reveal_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal_data(v) for v in value]
    return value


# --- exceptions and logs -----------------------------------------------------------------------------


def scrub_exception(error: BaseException) -> BaseException:
    """Redact the credentials in an exception's message (and its causes'), in place; returns it.

    Third-party errors quote URLs (`API request to http://user:token@host/... failed`); Prefect stores
    a failed state's message on its server and tracebacks end with the message.
    """
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        try:
            e.args = tuple(redact_text(a) if isinstance(a, str) else a for a in e.args)
            message = getattr(e, "message", None)
            if isinstance(message, str):
                e.message = redact_text(message)  # type: ignore[attr-defined]  # MlflowException and friends
        except (AttributeError, TypeError):  # an exception type with read-only attributes
            pass
        e = e.__cause__ or e.__context__
    return error


_installed = False


def install_log_redaction() -> None:
    """Redact credentials in every log record this process creates (message, arguments and exception),
    so no handler (the terminal, a log file, Prefect's API log handler) ever sees one. Idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def redacting_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: left to the handler's own error path
            return record
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            scrub_exception(record.exc_info[1])
        return record

    logging.setLogRecordFactory(redacting_record)
