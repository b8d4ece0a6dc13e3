"""``milvus-embed migrate ...``: thin wrappers that parse, call ``runner`` and print."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ..progress import ProgressBoard, add_quiet_arg
from . import runner
from .executor import RunHooks
from .history import utc_iso


def _settings(args: argparse.Namespace) -> Any:
    from ..cli import settings_from_args

    return settings_from_args(args)


def _config(args: argparse.Namespace) -> runner.MigrationConfig:
    return runner.config_from_settings(_settings(args), lock_ttl_s=getattr(args, "lock_ttl", 120.0),
                                       lock_wait_s=getattr(args, "lock_wait", 5.0),
                                       batch_size=getattr(args, "batch_size", 512),
                                       shards=getattr(args, "shards", 256),
                                       lease_ttl_s=getattr(args, "lease_ttl", 120.0))


def _ts(value: Any) -> str:
    try:
        return utc_iso(float(value))
    except (TypeError, ValueError):
        return "?"


def _print_steps(steps: list[runner.PlanStep], as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"revision": s.revision, "direction": s.direction, "message": s.message,
                           "ops": [op.to_dict() for op in s.ops]} for s in steps], indent=2, default=str))
        return
    if not steps:
        print("nothing to do: already at the target")
    for step in steps:
        print("\n".join(step.lines()))


def _board(args: argparse.Namespace) -> ProgressBoard:
    """Backfill progress per op (rows done of total, rate, ETA), from its checkpoint when a run resumes."""
    return ProgressBoard(unit="rows", quiet=args.quiet)


def _migrate(args: argparse.Namespace, move: Callable[..., list[str]]) -> list[str]:
    """Runs ``runner.upgrade`` or ``runner.downgrade`` to ``args.target`` with the progress board."""
    cfg = _config(args)
    with _board(args) as board:
        return move(cfg, args.target, hooks=RunHooks(progress=board))


def _upgrade(args: argparse.Namespace) -> int:
    done = _migrate(args, runner.upgrade)
    print(f"applied {len(done)} revision(s): {', '.join(done)}" if done else "already at the target; nothing applied")
    return 0


def _work(args: argparse.Namespace) -> int:
    from .workers import work

    report = work(_config(args), args.revision, worker_index=args.worker_index, workers=args.workers,
                  wait_s=args.wait)
    print(report.message)
    return 0


def _downgrade(args: argparse.Namespace) -> int:
    done = _migrate(args, runner.downgrade)
    print(f"unapplied {len(done)} revision(s): {', '.join(done)}" if done else "already at the target")
    return 0


def _current(args: argparse.Namespace) -> int:
    state = runner.current(_config(args))
    if not state.applied:
        print(f"{state.scope}: not migrated yet (run `milvus-embed migrate upgrade`)")
    else:
        print(f"{state.scope}: {', '.join(state.heads) or '(base)'}"
              + (" (head)" if not state.pending and not state.unknown else ""))
    if state.unknown:
        print(f"  unknown revision(s), not in these scripts: {', '.join(state.unknown)}")
    if state.pending:
        print(f"  pending: {', '.join(state.pending)}")
    for lk in state.locks:
        print(f"  lock {lk.describe()}")
    return 0


def _history(args: argparse.Namespace) -> int:
    entries, events = runner.history(_config(args))
    if args.log:
        for e in events:
            print(f"{_ts(e.get('at'))}  {e.get('action'):9}  {e.get('revision')}  {e.get('duration_s', 0):.3f}s  {e.get('by')}")
        return 0
    for entry in entries:
        down = ", ".join(entry.down_revisions) or "(base)"
        rec = entry.applied
        state = (f"applied {_ts(rec.get('applied_at'))} by {rec.get('by')} in {rec.get('duration_s')}s"
                 if rec else "not applied")
        print(f"{down} -> {entry.revision}  {entry.message}  [{state}]")
    return 0


def _heads(args: argparse.Namespace) -> int:
    for head in runner.heads(_config(args)):
        print(head)
    return 0


def _stamp(args: argparse.Namespace) -> int:
    at = runner.stamp(_config(args), args.revision)
    print(f"stamped at {', '.join(at) or '(base)'}; no operations ran")
    return 0


def _check(args: argparse.Namespace) -> int:
    report = runner.check(_config(args))
    for p in report.problems:
        print(f"DRIFT: {p}")
    for n in report.notes:
        print(f"note: {n}")
    if report.ok:
        print(f"{report.scope}: no drift")
        return 0
    return 4  # FailedPrecondition's exit code: the database does not match the scripts


def _plan(args: argparse.Namespace) -> int:
    steps = runner.plan(_config(args), args.target)
    _print_steps(steps, args.json)
    return 0


def _revision(args: argparse.Namespace) -> int:
    path = runner.new_revision(_config(args), args.message, merge=args.merge, revision_id=args.rev_id)
    print(f"wrote {path}")
    return 0


def _unlock(args: argparse.Namespace) -> int:
    removed = runner.unlock(_config(args), force=args.force)
    if not removed:
        print("no migration lock was held")
    for lk in removed:
        print(f"removed lock {lk.describe()}")
    return 0


def register(subparsers: Any) -> None:
    from ..cli import add_settings_args

    migrate = subparsers.add_parser(
        "migrate", help="schema migrations of a collection (upgrade, downgrade, check, ...)",
        description="Versioned schema migrations, kept in Milvus (system collection mee_migrations). "
                    "The collection migrated is --collection; the scripts come from --migrations-dir "
                    "(default: the built-in revisions).")
    sub = migrate.add_subparsers(dest="migrate_command", metavar="SUBCOMMAND")
    sub.required = True

    def cmd(name: str, handler: Any, help_text: str, lock: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_settings_args(p)
        if lock:
            p.add_argument("--lock-wait", type=float, default=5.0,
                           help="seconds to wait for another run's lock before giving up (default 5)")
            p.add_argument("--lock-ttl", type=float, default=120.0,
                           help="lock expiry in seconds, renewed while the run is alive (default 120)")
            p.add_argument("--batch-size", type=int, default=512,
                           help="rows per backfill batch; progress is checkpointed after each (default 512)")
        p.set_defaults(handler=handler)
        return p

    def shard_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--shards", type=int, default=256,
                       help="shards of a sharded backfill (reencode), fixed when its plan is opened (default 256)")
        p.add_argument("--lease-ttl", type=float, default=120.0,
                       help="seconds a shard claim lives without renewal (renewed every TTL/3 while working; default 120)")

    p = cmd("upgrade", _upgrade, "apply revisions up to TARGET (resumes an interrupted run; works and finishes "
            "sharded backfills)", lock=True)
    p.add_argument("target", nargs="?", default="head", help="revision id or prefix, head, heads or +N (default head)")
    add_quiet_arg(p)
    shard_args(p)
    p = cmd("work", _work, "one worker of REVISION's sharded backfill: claims shards until none is left "
            "(run many at once; finish with `migrate upgrade REVISION`)", lock=True)
    p.add_argument("--revision", required=True, help="the revision whose backfill to work (id or unique prefix)")
    p.add_argument("--worker-index", type=int, default=None,
                   help="this worker's index (an Indexed Job's completion index) to spread the first claims")
    p.add_argument("--workers", type=int, default=None, help="how many workers run (with --worker-index)")
    p.add_argument("--wait", type=float, default=600.0,
                   help="seconds to wait for the shard plan while another process holds the lock (default 600)")
    shard_args(p)
    p = cmd("downgrade", _downgrade, "unapply revisions down to TARGET", lock=True)
    p.add_argument("target", help="revision id or prefix, base, or -N")
    add_quiet_arg(p)
    cmd("current", _current, "show the collection's current revision")
    p = cmd("history", _history, "list the revisions (newest first) and when each was applied")
    p.add_argument("--log", action="store_true", help="show the log of upgrade/downgrade/stamp events instead")
    cmd("heads", _heads, "show the scripts' head revision(s)")
    p = cmd("stamp", _stamp, "record the collection as at REV without running anything", lock=True)
    p.add_argument("revision", help="revision id or prefix, head, heads or base")
    cmd("check", _check, "report drift: edited scripts, unknown revisions, schema differences (exit 4 on drift)")
    p = cmd("plan", _plan, "dry run: print every op that upgrade/downgrade to TARGET would run")
    p.add_argument("target", nargs="?", default="head")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = cmd("revision", _revision, "write a new revision script from the template (needs --migrations-dir)")
    p.add_argument("-m", "--message", required=True, help="what the revision does")
    p.add_argument("--merge", action="store_true", help="revise all current heads (a merge revision)")
    p.add_argument("--rev-id", default=None, help="revision id (default: random 12 hex digits)")
    p = cmd("unlock", _unlock, "break the migration lock left by a killed run")
    p.add_argument("--force", action="store_true", help="also break a lock that has not expired yet")
