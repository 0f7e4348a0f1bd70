"""`iotdps audit`: list, export, verify and prune the audit trail (iotdps.audit).

Like every administration command it runs on the local data dir, or with `--server` over the
management API (GET /audit); pruning only where the store is. `verify` reads the whole log in
pages and checks every hash and link; it exits 1 when it finds a problem, naming each entry.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import click

from iotdps.audit import AuditEntry, AuditQuery, verify_chain
from iotdps.audit.retention import prune
from iotdps.cli.actor import local_actor
from iotdps.cli.client import AdminClient
from iotdps.cli.target import local_dsn, run_client, server_target, target_options, target_params
from iotdps.errors import InvalidInput
from iotdps.timestamps import parse_time

__all__ = ["register"]

_PAGE = 1000
EXIT_TAMPERED = 1


async def _entries(client: AdminClient, query: AuditQuery, most: int | None = None) -> AsyncIterator[AuditEntry]:
    """Every entry matching `query`, page by page (at most `most`)."""
    after = query.after
    given = 0
    while True:
        size = _PAGE if most is None else min(_PAGE, most - given)
        if size <= 0:
            return
        page = await client.list_audit(AuditQuery(query.action, query.actor, query.target, query.since, after, size))
        for entry in page:
            yield entry
        given += len(page)
        if len(page) < size:
            return
        after = page[-1].seq


def _short(digest: str | None) -> str:
    """A digest as a table shows it: its first 12 hex digits (the JSON lines keep all of it)."""
    return "-" if digest is None else digest.removeprefix("sha256:")[:12]


def _since(text: str | None) -> datetime | None:
    return parse_time(text) if text else None


def _filters(f: Any) -> Any:
    for option in reversed(
        [
            click.option("--action", help="A whole action (enrollment.create) or a dotted prefix (enrollment)."),
            click.option("--actor", help="policy:NAME, console:NAME, local:USER or system:..."),
            click.option(
                "--target", help="What changed: enrollment/ID, group/ID, ca/NAME, hub/HOST, HUB/DEVICE, settings."
            ),
            click.option("--since", help="Only entries at or after this ISO-8601 time (UTC if no zone)."),
        ]
    ):
        f = option(f)
    return f


@click.group("audit")
def audit_group() -> None:
    """The audit trail: who changed what, when (hash-chained)."""


@audit_group.command("list")
@_filters
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines (one entry per line), as `audit export`.")
@target_options
def audit_list(
    action: str | None, actor: str | None, target: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """Entries oldest first, filtered."""
    query = AuditQuery(action, actor, target, _since(since))

    async def go(client: AdminClient) -> list[AuditEntry]:
        return [e async for e in _entries(client, query, limit)]

    found = run_client(go)
    for entry in found:
        if as_json:
            click.echo(json.dumps(entry.to_json(), sort_keys=True))
        else:
            change = f"{_short(entry.before)} -> {_short(entry.after)}"
            when = f"{entry.at:%Y-%m-%d %H:%M:%S}Z"
            click.echo(f"{entry.seq:>6} {when} {entry.actor} {entry.action} {entry.target} {change}")


@audit_group.command("export")
@_filters
@target_options
def audit_export(action: str | None, actor: str | None, target: str | None, since: str | None) -> None:
    """Every entry (filtered) as JSON lines on standard output, with its hashes."""
    query = AuditQuery(action, actor, target, _since(since))

    async def go(client: AdminClient) -> None:
        async for entry in _entries(client, query):
            sys.stdout.write(json.dumps(entry.to_json(), sort_keys=True) + "\n")

    run_client(go)


@audit_group.command("verify")
@click.option("--head", help="A hash `verify` printed earlier: fail unless it is still in the log.")
@target_options
def audit_verify(head: str | None) -> None:
    """Check every entry's hash and link; exit 1 naming each changed, deleted or reordered entry."""
    if head is not None and (len(head) != 64 or any(c not in "0123456789abcdef" for c in head)):
        raise InvalidInput("--head is a hash: 64 lower-case hex digits")

    async def go(client: AdminClient) -> Any:
        return verify_chain([e async for e in _entries(client, AuditQuery())])

    summary = run_client(go)
    for problem in summary.problems:
        click.echo(str(problem))
    missing_head = head is not None and head not in summary.hashes
    if missing_head:
        click.echo(f"deleted: the head noted earlier ({head}) is no longer in the log")
    if summary.problems or missing_head:
        click.echo(f"audit trail NOT intact: {len(summary.problems) + missing_head} problem(s)", err=True)
        sys.exit(EXIT_TAMPERED)
    if summary.head_seq is None:
        click.echo("audit trail intact: no entries yet")
    else:
        click.echo(f"audit trail intact: {summary.entries} entries, head {summary.head_seq} {summary.head_hash}")


@audit_group.command("prune")
@click.option("--older-than-days", type=int, required=True, help="Remove entries older than this many days.")
@target_options
def audit_prune(older_than_days: int) -> None:
    """Remove old entries; an audit.pruned entry records what went, so the chain still verifies."""

    params = target_params()
    if server_target(params) is not None:
        raise InvalidInput("audit prune runs where the store is (--data-dir or --dsn), not against --server")

    async def go() -> AuditEntry | None:
        from iotdps.store import open_store

        store = await open_store(local_dsn(params))
        try:
            return await prune(store, older_than_days=older_than_days, now=datetime.now(UTC), actor=local_actor())
        finally:
            await store.close()

    entry = asyncio.run(go())
    if entry is None:
        click.echo(f"nothing older than {older_than_days} days")
        return
    click.echo(f"pruned {entry.detail_doc().get('removed')} entries (through {entry.detail_doc().get('throughSeq')})")


def register(group: click.Group) -> None:
    group.add_command(audit_group)
