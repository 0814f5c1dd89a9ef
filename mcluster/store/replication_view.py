"""How current each node's contribution to an object is, read from the change stream.

Every applied batch is one entry of the object's stream, its id stamped with Redis time,
so the age of a view's newest entry is how long ago that node's last batch landed. A node
that records but cannot ship (Redis unreachable, a partition) shows a growing age while
its peers stay fresh. The dashboard prints it as the replication lag of each node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from mcluster.store.keys import ObjectKeys, text

#: Stream entries read back (newest first) to find each view's last batch.
SCAN_ENTRIES = 200


@dataclass(frozen=True)
class ViewActivity:
    """One node view of an object: its node, last applied seq, and age of its last batch."""

    view: str
    node: str
    seq: int
    last_batch_ms_ago: int | None  # None: no batch of it among the newest stream entries


async def view_activity(client: Redis, okeys: ObjectKeys, now_ms: int) -> list[ViewActivity]:
    """Every registered node view of one object, sorted by node name."""
    registered = cast(dict[bytes, bytes], await client.hgetall(okeys.views))
    seqs = cast(dict[bytes, bytes], await client.hgetall(okeys.seq))
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]],
        await client.xrevrange(okeys.stream, count=SCAN_ENTRIES),
    )
    newest: dict[str, int] = {}
    for entry_id, fields in entries:
        author = fields.get(b"view")
        if author is not None:
            newest.setdefault(text(author), int(text(entry_id).split("-")[0]))
    found = []
    for raw_view, raw_node in registered.items():
        view = text(raw_view)
        stamp = newest.get(view)
        found.append(
            ViewActivity(
                view=view,
                node=text(raw_node),
                seq=int(seqs.get(raw_view, b"0")),
                last_batch_ms_ago=None if stamp is None else max(0, now_ms - stamp),
            )
        )
    return sorted(found, key=lambda a: (a.node, a.view))
