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
only the handling of a request holds the lock.
"""

import threading

from moto.moto_server import werkzeug_app

_lock = threading.RLock()
_dispatch = werkzeug_app.DomainDispatcherApplication.__call__


def _serialized(self, environ, start_response):
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
