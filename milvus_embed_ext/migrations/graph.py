"""The revision graph: pure, no Milvus. Heads, bases, branches, merges, cycle detection, and the paths
that ``upgrade``/``downgrade`` walk given the set of applied revisions.

State is a *set of applied revisions* (not a single pointer) so branches and merges need no special
casing: upgrading to T applies ``ancestors(T) - applied`` parents-first; downgrading to T unapplies
the applied descendants of T children-first.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import FailedPrecondition, InvalidArgument, NotFound

_RELATIVE = re.compile(r"^([+-])(\d+)$")


@dataclass(frozen=True)
class Node:
    revision: str
    down_revisions: tuple[str, ...]


class RevisionGraph:
    """Built from anything with ``revision`` and ``down_revisions`` (scripts, or Nodes in tests)."""

    def __init__(self, nodes: Iterable[object]):
        self.parents: dict[str, tuple[str, ...]] = {}
        self._order: dict[str, int] = {}
        for i, node in enumerate(nodes):
            rev = node.revision  # type: ignore[attr-defined]
            if rev in self.parents:
                raise InvalidArgument(f"revision {rev!r} is defined twice")
            self.parents[rev] = tuple(node.down_revisions)  # type: ignore[attr-defined]
            self._order[rev] = i
        self.children: dict[str, list[str]] = {rev: [] for rev in self.parents}
        for rev, parents in self.parents.items():
            for parent in parents:
                if parent not in self.parents:
                    raise InvalidArgument(
                        f"revision {rev!r} revises {parent!r}, which no script defines; "
                        "restore that script or fix down_revision"
                    )
                self.children[parent].append(rev)
        for kids in self.children.values():
            kids.sort()
        self._topo = self._toposort()

    # ---- structure
    def __contains__(self, rev: object) -> bool:
        return rev in self.parents

    def __len__(self) -> int:
        return len(self.parents)

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(r for r in self._topo if not self.children[r])

    @property
    def bases(self) -> tuple[str, ...]:
        return tuple(r for r in self._topo if not self.parents[r])

    @property
    def merges(self) -> tuple[str, ...]:
        return tuple(r for r in self._topo if len(self.parents[r]) > 1)

    @property
    def branch_points(self) -> tuple[str, ...]:
        return tuple(r for r in self._topo if len(self.children[r]) > 1)

    def _toposort(self) -> list[str]:
        """Kahn's algorithm, ties broken by revision id for a deterministic order; reports any cycle."""
        indegree = {rev: len(parents) for rev, parents in self.parents.items()}
        ready = [rev for rev, d in indegree.items() if d == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            rev = heapq.heappop(ready)
            order.append(rev)
            for child in self.children[rev]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    heapq.heappush(ready, child)
        if len(order) != len(self.parents):
            stuck = sorted(rev for rev, d in indegree.items() if d > 0)
            raise InvalidArgument(f"the revision graph has a cycle through: {', '.join(self._cycle(stuck))}")
        return order

    def _cycle(self, stuck: Sequence[str]) -> list[str]:
        """One concrete cycle among the stuck revisions, for the error message."""
        start = stuck[0]
        path: list[str] = [start]
        seen = {start: 0}
        rev = start
        while True:
            rev = next(p for p in self.parents[rev] if p in set(stuck))
            if rev in seen:
                return path[seen[rev]:] + [rev]
            seen[rev] = len(path)
            path.append(rev)

    def topo(self, revisions: Iterable[str]) -> list[str]:
        """The given revisions, parents before children."""
        wanted = set(revisions)
        return [r for r in self._topo if r in wanted]

    def ancestors(self, rev: str, inclusive: bool = True) -> set[str]:
        return _reachable(rev, self.parents, inclusive)

    def descendants(self, rev: str, inclusive: bool = True) -> set[str]:
        return _reachable(rev, self.children, inclusive)

    def all_revisions(self) -> set[str]:
        """Every revision the scripts define: what upgrading to ``heads`` ends with applied (every
        revision is an ancestor of some head)."""
        return set(self.parents)

    def pending(self, applied: Iterable[str]) -> list[str]:
        """Revisions not in ``applied``, parents first: what ``upgrade heads`` would apply."""
        applied = set(applied)
        return [r for r in self._topo if r not in applied]

    def heads_of(self, applied: Iterable[str]) -> tuple[str, ...]:
        """The current revision(s) of a database whose applied set is ``applied``."""
        applied = set(applied)
        return tuple(r for r in self.topo(applied) if not any(c in applied for c in self.children[r]))

    # ---- naming
    def resolve(self, name: str) -> str:
        """A full revision id from an id or a unique prefix of one."""
        if name in self.parents:
            return name
        matches = sorted(r for r in self.parents if r.startswith(name)) if name else []
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFound(f"no revision {name!r} in the migration scripts; `milvus-embed migrate history` lists them")
        raise InvalidArgument(f"revision prefix {name!r} is ambiguous: {', '.join(matches)}")

    def single_head(self) -> str:
        heads = self.heads
        if not heads:
            raise NotFound("there are no migration scripts")
        if len(heads) > 1:
            raise FailedPrecondition(
                f"the scripts have {len(heads)} heads ({', '.join(heads)}); upgrade to one of them, to `heads`, "
                "or join them with `milvus-embed migrate revision --merge -m MSG`"
            )
        return heads[0]

    def check_applied(self, applied: Iterable[str]) -> None:
        """An applied set must be known and closed under ancestors, or the history is inconsistent."""
        applied = set(applied)
        unknown = sorted(applied - set(self.parents))
        if unknown:
            raise FailedPrecondition(
                f"the database is at revision(s) {', '.join(unknown)}, which the migration scripts do not define; "
                "use the scripts that produced it (--migrations-dir) or run `milvus-embed migrate upgrade` with them"
            )
        for rev in applied:
            missing = self.ancestors(rev) - applied
            if missing:
                raise FailedPrecondition(
                    f"revision {rev} is recorded as applied but its ancestor(s) {', '.join(sorted(missing))} are not; "
                    "fix the history with `milvus-embed migrate stamp`"
                )

    # ---- paths
    def upgrade_path(self, applied: Iterable[str], target: str = "head") -> list[str]:
        """Revisions to apply, parents first, to reach ``target`` (id, prefix, head, heads or +N)."""
        applied = set(applied)
        self.check_applied(applied)
        n = _relative_steps(target, "upgrade")
        if n is not None:
            pending = [r for r in self._topo if r not in applied]
            # Only revisions whose parents are applied or in the chosen prefix are reachable in order.
            return pending[:n]
        if target == "heads":
            return self.pending(applied)
        rev = self.single_head() if target == "head" else self.resolve(target)
        return self.topo(self.ancestors(rev) - applied)

    def downgrade_path(self, applied: Iterable[str], target: str) -> list[str]:
        """Revisions to unapply, children first, to reach ``target`` (id, prefix, base or -N)."""
        applied = set(applied)
        self.check_applied(applied)
        n = _relative_steps(target, "downgrade")
        if n is not None:
            ordered = list(reversed(self.topo(applied)))
            if n > len(ordered):
                raise InvalidArgument(f"cannot go down {n} revision(s): only {len(ordered)} applied")
            return ordered[:n]
        if target == "base":
            return list(reversed(self.topo(applied)))
        rev = self.resolve(target)
        if rev not in applied:
            raise InvalidArgument(
                f"revision {rev} is not applied, so there is nothing to downgrade to; "
                "`milvus-embed migrate current` shows where the database is"
            )
        return list(reversed(self.topo(self.descendants(rev, inclusive=False) & applied)))


def _relative_steps(target: str, command: str) -> int | None:
    """N of a relative target (``+N`` for upgrade, ``-N`` for downgrade), None for an absolute one; a relative
    target that goes the other way is refused with the command that takes it."""
    rel = _RELATIVE.match(target)
    if rel is None:
        return None
    up = command == "upgrade"
    if (rel.group(1) == "+") != up:
        other, way = ("downgrade", "down") if up else ("upgrade", "up")
        raise InvalidArgument(f"{command} target {target!r} goes {way}; use `{other} {target}`")
    return int(rel.group(2))


def _reachable(rev: str, edges: Mapping[str, Sequence[str]], inclusive: bool) -> set[str]:
    """Every revision reachable from ``rev`` along ``edges`` (parents: ancestors; children: descendants)."""
    out: set[str] = set()
    stack = [rev] if inclusive else list(edges[rev])
    while stack:
        r = stack.pop()
        if r not in out:
            out.add(r)
            stack.extend(edges[r])
    return out


def graph_from_mapping(parents: Mapping[str, Sequence[str] | str | None]) -> RevisionGraph:
    """Convenience for tests and tools: {revision: down_revision(s)}."""
    nodes = []
    for rev, down in parents.items():
        downs = () if down is None else (down,) if isinstance(down, str) else tuple(down)
        nodes.append(Node(rev, downs))
    return RevisionGraph(nodes)
