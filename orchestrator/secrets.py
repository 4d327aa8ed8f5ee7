"""Masking secrets out of everything plaster writes: logs, cycle records, MLflow params and
tags, command output.

A secret is a password in a URI's userinfo (`postgresql://mlflow:PASSWORD@db/mlflow`), a
query parameter named like one (`?X-Amz-Signature=...`), or the value of a secret
environment variable (AWS_SECRET_ACCESS_KEY, ..._PASSWORD, ..._TOKEN) found verbatim. Each
becomes `***`; everything else (host, user, path) stays, so a message still says where.

This module only rewrites text handed to it. It must never log, print, store or return a
secret itself, never change what plaster *uses* (connections keep their real URIs), and
import nothing heavy: errors.py and the logging path import it in every process.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import urllib.parse
from typing import Any

MASK = "***"

# Secret by name whatever the deployment; the suffix rule below catches the rest.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "RAY_AUTH_TOKEN", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AZURE_STORAGE_KEY")
SECRET_SUFFIXES = ("_PASSWORD", "_PASSWD", "_SECRET", "_TOKEN", "_SECRET_ACCESS_KEY", "_SECRET_KEY", "_API_KEY",
                   "_ACCOUNT_KEY", "_STORAGE_KEY")
# Names that match a rule but hold a path or a switch, not the secret itself.
NOT_SECRET_ENV = ("GOOGLE_APPLICATION_CREDENTIALS",)
MIN_SECRET_LEN = 6  # shorter values ("true", "1") would mask ordinary words everywhere

# scheme://user:password@ — user may be empty (redis://:pw@host). The password runs to the
# '@' as SQLAlchemy parses it (a '/' may be in it), never across whitespace or quotes.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"<>]*:)(?P<pw>[^\s@'\"<>]+)(?=@)")
_QUERY = re.compile(r"(?P<head>[?&;](?P<name>[A-Za-z0-9_.\-]+)=)(?P<value>[^&#;\s'\"<>]+)")
_SECRET_WORDS = ("password", "passwd", "secret", "token", "key", "credential", "signature")
_SECRET_PARTS = ("pwd", "sig", "auth")  # whole name parts only: 'sig' would match 'design'


def _secret_param(name: str) -> bool:
    """X-Amz-Signature, X-Amz-Credential, access_token, apikey, password, sig: yes."""
    parts = [p for p in re.split(r"[-_.]", name.lower()) if p]
    return any(p.endswith(_SECRET_WORDS) or p in _SECRET_PARTS for p in parts)


def _secret_env_name(name: str) -> bool:
    return name not in NOT_SECRET_ENV and (name in SECRET_ENV or name.upper().endswith(SECRET_SUFFIXES))


def secret_values(environ: os._Environ | dict[str, str] | None = None) -> list[str]:
    """The values to mask wherever they appear: secret environment variables read now (a
    token exported after start is masked too), with their URL-encoded forms, longest first."""
    env = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in list(env.items()):
        if value and len(value) >= MIN_SECRET_LEN and _secret_env_name(name):
            found.add(value)
            found.add(urllib.parse.quote(value, safe=""))  # how it looks inside a URI
    return sorted(found, key=len, reverse=True)


class _Masker:
    """One pass over many strings (a whole record) reads the environment once."""

    def __init__(self, values: list[str]):
        self.values = re.compile("|".join(map(re.escape, values))) if values else None

    def __call__(self, text: str) -> str:
        if self.values is not None:
            text = self.values.sub(MASK, text)
        if "://" in text and "@" in text:
            text = _USERINFO.sub(lambda m: m["head"] + MASK, text)
        if "=" in text:
            text = _QUERY.sub(lambda m: m["head"] + MASK if _secret_param(m["name"]) else m[0], text)
        return text


def mask(text: str) -> str:
    """`text` with every secret replaced by `***`; idempotent, and unchanged when it holds none."""
    if not isinstance(text, str) or not text:
        return text
    return _Masker(secret_values())(text)


def mask_obj(obj: Any, _masker: _Masker | None = None) -> Any:
    """A copy of `obj` with every string in it (dict keys too) masked, walking dicts, lists
    and tuples; other values come back as they are."""
    m = _masker or _Masker(secret_values())
    if isinstance(obj, str):
        return m(obj)
    if isinstance(obj, dict):
        return {mask_obj(k, m): mask_obj(v, m) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask_obj(v, m) for v in obj]
    if isinstance(obj, tuple):
        return type(obj)(*(mask_obj(v, m) for v in obj)) if hasattr(obj, "_fields") \
            else tuple(mask_obj(v, m) for v in obj)
    return obj


def _mask_record(record: logging.LogRecord) -> None:
    if getattr(record, "_plaster_masked", False):
        return
    record._plaster_masked = True
    try:
        message = record.getMessage()
    except Exception:  # args that do not fit the format: logging reports that itself, later
        return
    masked = mask(message)
    if masked != message or record.args:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        # Formatters reuse exc_text when it is set: the traceback is formatted once, masked.
        record.exc_text = mask("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    if record.stack_info:
        record.stack_info = mask(record.stack_info)


class MaskFilter(logging.Filter):
    """Masks a record's message (formatted with its args), traceback and stack; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        _mask_record(record)
        return True


_FILTER = MaskFilter()
LOGGERS = ("plaster", "mlflow", "ray")


def install() -> None:
    """Mask every log record this process makes from now on; calling it again changes nothing.

    A filter on a logger only sees records logged on that very logger, not its children's,
    and runtime.py replaces Ray's handlers when it starts Ray, so the record factory is what
    guarantees it; the filters on the root's handlers and the plaster, mlflow and ray loggers
    are for records made before install() or by a factory someone set after it.
    """
    current = logging.getLogRecordFactory()
    if not getattr(current, "_plaster_mask", False):
        def factory(*args, **kwargs):
            record = current(*args, **kwargs)
            _mask_record(record)
            return record

        factory._plaster_mask = True
        logging.setLogRecordFactory(factory)
    targets = [logging.getLogger()] + [logging.getLogger(n) for n in LOGGERS]
    for lg in targets:
        for f in [lg, *lg.handlers]:
            if _FILTER not in f.filters:
                f.addFilter(_FILTER)
    if not getattr(sys.excepthook, "_plaster_mask", False):
        # An error escaping a command prints its traceback: MLflow puts the request URL in its messages.
        previous = sys.excepthook

        def excepthook(kind, value, tb):
            if kind is KeyboardInterrupt:
                return previous(kind, value, tb)
            sys.stderr.write(mask("".join(traceback.format_exception(kind, value, tb))))

        excepthook._plaster_mask = True
        sys.excepthook = excepthook
