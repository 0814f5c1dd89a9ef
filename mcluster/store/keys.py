"""Key naming. Every key of one object shares the hash tag ``{name}``, so one script
touches one hash slot, and every key starts with the namespace.

Layout for object ``inbound_cidr`` in namespace ``mc`` (``B`` = ``mc:{inbound_cidr}``):

- ``B:views``      hash  view id -> node name (views that may write)
- ``B:reaping``    hash  view id -> node name (dead views being drained)
- ``B:seq``        hash  view id -> last applied batch seq
- ``B:stream``     stream of applied batches; ``B:notify`` pub/sub channel
- ``B:g:meta``     hash  global view figures (distinct keys, anomalies, ...)
- ``B:n:VIEW:meta`` the same for one node view
- ``B:g:…`` / ``B:n:VIEW:…`` the data keys of each kind (buckets, hashes)

Cluster-wide keys use the tag ``{cluster}``: ``mc:{cluster}:members``, ``:epoch``,
``:objects``, ``:lease:NODE``, ``:leader``, ``:leader_token``, ``:incarnation``, ``:reaping``;
console requests ``:requests:NODE`` (list), their answers ``:reply:ID`` (list) and who
answers them ``:responders`` (hash); jobs
``:jobs`` (hash id -> JSON), ``:job_id`` (counter), ``:jobs:abort`` (set of ids).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GLOBAL = "g"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(what: str, name: str) -> str:
    """Object and node names become parts of keys: letters, digits, ``. _ -`` only."""
    if not _NAME.match(name):
        raise ValueError(
            f"bad {what} name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class ClusterKeys:
    """Keys shared by the whole cluster (membership, epochs, object registry)."""

    namespace: str = "mc"

    def __post_init__(self) -> None:
        if not _NAMESPACE.match(self.namespace):
            raise ValueError(f"bad namespace {self.namespace!r}: letters, digits, '.', '_', '-'")

    @property
    def base(self) -> str:
        return f"{self.namespace}:{{cluster}}"

    @property
    def members(self) -> str:
        return f"{self.base}:members"

    @property
    def epoch(self) -> str:
        return f"{self.base}:epoch"

    @property
    def objects(self) -> str:
        return f"{self.base}:objects"

    @property
    def incarnation(self) -> str:
        return f"{self.base}:incarnation"

    @property
    def leader(self) -> str:
        return f"{self.base}:leader"

    @property
    def leader_token(self) -> str:
        return f"{self.base}:leader_token"

    @property
    def status(self) -> str:
        """What each node reports with its heartbeat: node -> "MS JSON" (store/node_status)."""
        return f"{self.base}:status"

    @property
    def reaping(self) -> str:
        """Progress of the reaping jobs: view id -> JSON."""
        return f"{self.base}:reaping"

    def lease(self, node: str) -> str:
        return f"{self.base}:lease:{node}"

    def requests(self, node: str) -> str:
        """Console commands waiting for one member (a list the member pops)."""
        return f"{self.base}:requests:{node}"

    @property
    def responders(self) -> str:
        """Members that answer console requests: node -> JSON {type, seen_ms}."""
        return f"{self.base}:responders"

    def reply(self, request_id: str) -> str:
        """The answers to one console request (a list the asker pops)."""
        return f"{self.base}:reply:{request_id}"

    @property
    def jobs(self) -> str:
        """Jobs (broadcasts, re-syncs, reaping, resets): id -> JSON record."""
        return f"{self.base}:jobs"

    @property
    def job_id(self) -> str:
        return f"{self.base}:job_id"

    @property
    def jobs_abort(self) -> str:
        """Ids of the jobs an operator asked to abort."""
        return f"{self.base}:jobs:abort"

    def object(self, name: str, shard: int = 0) -> ObjectKeys:
        return ObjectKeys(self.namespace, check_name("object", name), shard)


@dataclass(frozen=True)
class ObjectKeys:
    """Keys of one replicated object; ``view`` is ``GLOBAL`` or a node's view id."""

    namespace: str
    name: str
    shard: int = 0  # shard k > 0 of a sharded object has the tag {name#k}

    @property
    def base(self) -> str:
        tag = self.name if self.shard == 0 else f"{self.name}#{self.shard}"
        return f"{self.namespace}:{{{tag}}}"

    @property
    def views(self) -> str:
        return f"{self.base}:views"

    @property
    def reaping(self) -> str:
        return f"{self.base}:reaping"

    @property
    def seq(self) -> str:
        return f"{self.base}:seq"

    @property
    def stream(self) -> str:
        return f"{self.base}:stream"

    @property
    def channel(self) -> str:
        return f"{self.base}:notify"

    def view_base(self, view: str) -> str:
        return f"{self.base}:g" if view == GLOBAL else f"{self.base}:n:{view}"

    def meta(self, view: str) -> str:
        return f"{self.view_base(view)}:meta"

    def data(self, view: str, suffix: str = "") -> str:
        """A data key of a view: the gauge hash (no suffix) or a tree bucket."""
        return f"{self.view_base(view)}:d{suffix}"


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients here return bytes; typing says bytes or str)."""
    return value.decode() if isinstance(value, bytes) else value
