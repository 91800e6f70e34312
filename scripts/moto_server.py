"""moto's server, with one request processed at a time.

Usage: python scripts/moto_server.py -H 127.0.0.1 -p PORT   (same flags as moto_server)

Why: moto's server is threaded and its DynamoDB backend has no lock.
TransactWriteItems there checks and writes item by item and rolls back by
restoring a snapshot of whole tables, so two transactions running at once in
two threads can both pass their conditions, or one's rollback can resurrect or
erase the other's writes. Real DynamoDB transactions are serializable (a
conflicting one is cancelled with TransactionConflict). Serializing requests
makes the emulator keep that guarantee; without it, Courier's concurrent-send
tests fail on moto, not on DynamoDB. Connections stay keep-alive and threaded:
only the handling of a request holds the lock, never socket I/O (the body is
read before, the response written after).
"""

import io
import threading

from moto.moto_server import werkzeug_app

_lock = threading.RLock()
_dispatch = werkzeug_app.DomainDispatcherApplication.__call__


def _read_body(environ):
    """The whole request body, read before taking the lock: a client that
    stalls mid-body (the fault-injection proxy does that on purpose) must
    stall only its own request, never the whole server."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    length = environ.get("CONTENT_LENGTH") or ""
    if length.isdigit():
        return stream.read(int(length))
    if environ.get("wsgi.input_terminated"):
        return stream.read()
    return b""


def _serialized(self, environ, start_response):
    # moto's own introspection (/moto-api/data.json dumps every backend and
    # can take many seconds on a busy server) changes nothing: let it run
    # beside the AWS API calls instead of stalling them.
    if environ.get("PATH_INFO", "").startswith("/moto-api/"):
        return _dispatch(self, environ, start_response)
    body = _read_body(environ)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    with _lock:
        body = _dispatch(self, environ, start_response)
        try:
            return [b"".join(body)]
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()


werkzeug_app.DomainDispatcherApplication.__call__ = _serialized

if __name__ == "__main__":
    from moto.server import main

    main()
