"""What reaches a terminal or a log: no secrets, no control characters.

Every error line and log record goes through :func:`safe`: credentials in URLs and connection strings are
masked (``user:***@host``, ``apiKey=***``, ``password=***``), and control characters (a file name holding a
newline or a terminal escape) are shown escaped, so a name can neither forge an ``error:`` line nor drive the
terminal.
"""

from __future__ import annotations

import logging
import re

_USERINFO = re.compile(r"(?P<user>[A-Za-z0-9._~%+-]+):(?P<secret>[^@\s/:]+)@")
_SECRET_PARAMS = re.compile(
    r"(?P<key>\b(?:api[_-]?key|key|token|access[_-]?token|password|passwd|secret|sslpassword)=)(?P<value>[^&\s'\"]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the passwords of URLs and ``user:password@`` pairs and secret parameters masked."""
    text = _USERINFO.sub(lambda match: f"{match['user']}:***@", text)
    return _SECRET_PARAMS.sub(lambda match: f"{match['key']}***", text)


def printable(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``, ...)."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or char == " " else char.encode("unicode_escape").decode() for char in text
    )


def safe(text: str) -> str:
    return printable(redact(text))


def safe_lines(text: str) -> str:
    """A message of several lines (a list of folders looked in): each line :func:`safe`, and every line after the
    first indented, so nothing in it (a file name with a newline) can stand at the start of a line of its own."""
    first, *rest = redact(text).split("\n")
    return "\n".join([printable(first), *("  " + printable(line).lstrip() for line in rest)])


class SafeFormatter(logging.Formatter):
    """A log formatter whose lines are :func:`safe`."""

    def format(self, record: logging.LogRecord) -> str:
        return safe(super().format(record))


def counted(number: int, noun: str) -> str:
    """``number`` with ``noun``, plural unless it is 1: "1 face", "3 faces"."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
