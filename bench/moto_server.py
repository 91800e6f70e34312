"""moto's server for the benchmarks: scripts/moto_server.py (one request at a
time) plus one patch, a base-table Query that reads only its partition.

Usage: python bench/moto_server.py -H 127.0.0.1 -p PORT   (moto_server's flags)

And one setting: a listen backlog of 4096 instead of werkzeug's 128. The
reconnect storm opens ~1,000 connections to moto at once (one per
concurrent catch-up); with 128, the kernel drops the SYNs past the backlog
and the SDK's 3 s connect timeout fires, which measures the emulator's
socket settings rather than anything Courier or DynamoDB does.

Why: moto 5's Table.query builds its candidates from Table.all_items(), which
sorts *every item of the table*, and only then keeps the queried partition
(profiled: the time goes to DynamoType.cast_value/__eq__ in that sort). So a
Query costs time in proportion to the table, not to what it returns: 3 items
from a 10,000-item table take ~0.1 s, 500 items ~1 s. DynamoDB's Query does
not grow with the table, and the catch-up benchmark seeds thousands of
messages in one table (the storm: 1,000 conversations), so with stock moto
the figures would measure moto's sort, not Courier's round trips.

The patch hands query() the queried partition's items instead of the whole
table; query() itself still filters them by partition key, sorts them by
range key and applies every condition, limit and page exactly as before, so
results are unchanged, only cheaper. Queries on an index, or on a table
without a range key, take moto's own path. The tests keep using
scripts/moto_server.py unpatched; the benchmark's smoke run (in
scripts/test) runs on that one too.
"""

import importlib.util
import inspect
import os

import werkzeug.serving
from moto.dynamodb.models.table import Table

werkzeug.serving.BaseWSGIServer.request_queue_size = 4096

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "courier_moto_server", os.path.join(_here, "..", "scripts", "moto_server.py")
)
_serialized = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_serialized)  # installs the one-request-at-a-time lock

_query = Table.query
_signature = inspect.signature(_query)


def _partition_query(self, *args, **kwargs):
    bound = _signature.bind(self, *args, **kwargs)
    hash_key = bound.arguments.get("hash_key")
    if bound.arguments.get("index_name") or hash_key is None or not self.range_key_attr:
        return _query(self, *args, **kwargs)
    partition = sorted(
        self.items.get(hash_key, {}).values(), key=lambda item: item.range_key
    )
    # An instance attribute shadows the method for this one call; requests
    # are serialized, so no other query sees it.
    self.all_items = lambda: partition
    try:
        return _query(self, *args, **kwargs)
    finally:
        del self.all_items


Table.query = _partition_query

if __name__ == "__main__":
    from moto.server import main

    main()
