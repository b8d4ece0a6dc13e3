"""Schema migrations for milvus-embed collections: revision scripts, a pure revision graph, ops as data
with ``reverse()``, history and lock kept in Milvus, resumable backfills.

Library first: every command is a plain function over one :class:`MigrationConfig` (or ``Settings``);
the ``milvus-embed migrate`` CLI (``cli.py``) only parses arguments and prints.
"""

from .executor import OpContext, RunHooks
from .graph import RevisionGraph, graph_from_mapping
from .history import SYSTEM_COLLECTION, LockInfo, SystemTable
from .ops import (
    AddField,
    AddTruncatedDense,
    AlterProperties,
    CreateCollection,
    CreateIndex,
    DropCollection,
    DropField,
    DropIndex,
    DropTruncatedDense,
    FieldSpec,
    IndexSpec,
    IrreversibleOperation,
    Op,
    Operations,
    RebuildCollection,
    Reencode,
    RunPython,
)
from .runner import (
    CheckReport,
    CurrentState,
    MigrationConfig,
    PlanStep,
    check,
    check_revision_known,
    config_from_settings,
    current,
    downgrade,
    heads,
    history,
    load_environment,
    new_revision,
    plan,
    stamp,
    unlock,
    upgrade,
)
from .script import Script, builtin_migrations_dir, load_scripts
from .workers import WorkReport, work

__all__ = [
    "SYSTEM_COLLECTION", "AddField", "AddTruncatedDense", "AlterProperties", "CheckReport", "CreateCollection",
    "CreateIndex", "CurrentState", "DropCollection", "DropField", "DropIndex", "DropTruncatedDense", "FieldSpec",
    "IndexSpec", "IrreversibleOperation", "LockInfo", "MigrationConfig", "Op", "OpContext", "Operations",
    "PlanStep", "RebuildCollection", "Reencode", "RevisionGraph", "RunHooks", "RunPython", "Script", "SystemTable",
    "builtin_migrations_dir", "check", "check_revision_known", "config_from_settings", "current", "downgrade",
    "graph_from_mapping", "heads", "history", "load_environment", "load_scripts", "new_revision", "plan", "stamp",
    "unlock", "upgrade", "WorkReport", "work",
]
