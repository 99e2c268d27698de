"""In-process engine: a Flower ``Grid`` that hands each message straight to the ClientApp.

Flower's Simulation Engine (Ray) costs ~5 s a round here; this engine costs almost nothing,
so a strategy sweep on a laptop runs at the speed of the training itself. Same ServerApp
logic, same ClientApp: only the transport differs. Sites train one after the other, in
partition order or in the ``order`` given (the result must not depend on it: every site
draws from its own seeds, and the server aggregates replies in an order of their content).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Sequence

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run, RunStatus
from flwr.supercore.task_identity import TaskIdentity

from medfed.config import NODE_PARTITION_ID

SERVER_NODE_ID = 1
SITE_NODE_BASE = 1000  # partition i is node 1000 + i
_run_ids = itertools.count(1)


class InProcessGrid(Grid):
    """``n_sites`` virtual nodes, each a ClientApp with its own persistent ``Context``.

    ``order``: the partition indices in the order their sites handle a batch of messages
    (default: 0, 1, ...).
    """

    def __init__(self, client_app: ClientApp, n_sites: int, run_config: dict,
                 order: Sequence[int] | None = None) -> None:
        self.client_app = client_app
        self.order = list(range(n_sites)) if order is None else [int(i) for i in order]
        if sorted(self.order) != list(range(n_sites)):
            raise ValueError(f"order {self.order} is not a permutation of 0..{n_sites - 1}")
        run_id = next(_run_ids)
        self._run = Run(run_id=run_id, fab_id="medfed", fab_version="", fab_hash="",
                        override_config=dict(run_config), pending_at="", starting_at="",
                        running_at="", finished_at="", status=RunStatus("running", "", ""),
                        flwr_aid="", federation_id="", primary_task_id=None, bytes_sent=0,
                        bytes_recv=0, clientapp_runtime=0.0)
        self.contexts = {
            SITE_NODE_BASE + i: Context(run_id=run_id, node_id=SITE_NODE_BASE + i,
                              node_config={NODE_PARTITION_ID: i, "num-partitions": n_sites},
                              state=RecordDict(), run_config=dict(run_config))
            for i in range(n_sites)
        }
        # Flower's Message constructor reads the sender's identity from here
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SERVER_NODE_ID, 0
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages, ids = list(messages), []
        for message in messages:
            message_id = uuid.uuid4().hex
            message.metadata.__dict__["_message_id"] = message_id
            ids.append(message_id)
        rank = {SITE_NODE_BASE + i: position for position, i in enumerate(self.order)}
        batch = sorted(zip(ids, messages, strict=True),
                       key=lambda item: rank.get(item[1].metadata.dst_node_id, -1))
        for message_id, message in batch:
            self._replies[message_id] = self._deliver(message)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message:
        context = self.contexts[message.metadata.dst_node_id]
        return self.client_app(message, context)
