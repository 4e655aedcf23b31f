from urllib.parse import urlsplit


class SyncError(Exception):
    """A problem the user must fix: the message names the table, the column and what to do.

    Messages never carry credentials: connection errors go through `describe_url` and `redact`.
    """


class ConnectionFailed(SyncError):
    """A database could not be reached or opened: worth retrying, unlike other sync errors."""


def describe_url(url: str) -> str:
    """The URL without user and password, for messages and logs."""
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        return f"chdb://{parts.path}"
    host = parts.hostname or "local socket"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def require_scheme(url: str, variable: str, schemes: tuple[str, ...]) -> None:
    """A URL of the wrong kind is a configuration error, not a connection to retry."""
    if urlsplit(url).scheme not in schemes:
        expected = ", ".join(f"{scheme}://" for scheme in schemes)
        raise SyncError(
            f"{variable} must be a URL starting with {expected}, not {describe_url(url)!r}."
        )


def redact(message: str, url: str) -> str:
    password = urlsplit(url).password
    return message.replace(password, "***") if password else message
