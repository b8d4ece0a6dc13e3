"""Run ``migrations.upgrade`` on an embedded Lite DB and print one line per checkpointed batch (flushed), so that the
parent can SIGKILL this process at a known point of a backfill. argv: settings overrides (JSON), batch size."""

from __future__ import annotations

import json
import sys

from milvus_embed_ext import migrations as m
from milvus_embed_ext.config import load_settings

settings = load_settings(env={}, overrides=json.loads(sys.argv[1]))
hooks = m.RunHooks(after_batch=lambda key, copied: print(f"batch {key} {copied}", flush=True))
done = m.upgrade(m.config_from_settings(settings, batch_size=int(sys.argv[2]), lock_wait_s=5), hooks=hooks)
print(json.dumps({"applied": done}), flush=True)
