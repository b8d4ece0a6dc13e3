"""Run `upgrade` in a separate process against a Lite server reached over its unix socket.

argv: socket_uri, settings overrides (JSON), mode ("plain" | "kill-after-batches:N"), batch size.
"""

from __future__ import annotations

import json
import os
import sys

from pymilvus import MilvusClient

from milvus_embed_ext import migrations as m
from milvus_embed_ext.config import load_settings
from milvus_embed_ext.errors import FailedPrecondition
from milvus_embed_ext.store.capabilities import capabilities_for
from milvus_embed_ext.store.client import MilvusStore

uri, overrides, mode, batch = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
settings = load_settings(env={}, overrides=overrides)
store = MilvusStore.from_client(MilvusClient(uri=uri), capabilities_for("2.5.1", lite=True))
hooks = m.RunHooks()
if mode.startswith("kill-after-batches:"):
    limit = int(mode.split(":")[1])
    seen = []

    def after_batch(key: str, copied: int) -> None:
        seen.append(key)
        if len(seen) >= limit:
            os._exit(9)  # like SIGKILL: no cleanup, the lock row stays behind

    hooks.after_batch = after_batch
try:
    done = m.upgrade(m.config_from_settings(settings, batch_size=batch, lock_wait_s=30), store=store, hooks=hooks)
except FailedPrecondition as exc:
    print(json.dumps({"applied": [], "error": str(exc)}))
    sys.exit(4)
print(json.dumps({"applied": done}))
