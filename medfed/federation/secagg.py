"""Secure aggregation (SecAgg+) as a Message-API workflow inside MedFed's round loop.

``strategy.secure: secagg+``: the coordinator learns the example-weighted sum of the sites'
updates and nothing about any single one. Flower's SecAgg+ exists only for its legacy API
(``SecAggPlusWorkflow`` needs a ``LegacyContext``); this module runs the same protocol, on
Flower's own primitives (``flwr.common.secure_aggregation``: ECDH key agreement, Fernet
encryption of the shares, Shamir secret sharing, stochastic quantisation, seeded masks), as
extra messages of one training round:

1. setup (``query.secagg``): every sampled site makes two key pairs, returns the public keys;
2. share keys (``query.secagg``): each site gets its neighbours' public keys and returns, per
   neighbour, a ciphertext holding a Shamir share of its mask seed and of its first secret key;
3. collect (``train``): the normal train message plus the ciphertexts addressed to the site;
   the site trains, then answers with its metrics and one masked int64 vector (no arrays):
   ``[weight per array, clipped count, weight * quantised update] + own mask +/- pair masks
   (mod 2**62)``, the update being trained minus received arrays;
4. unmask (``query.secagg``): each surviving site returns shares of its surviving neighbours'
   mask seeds and of the dropped neighbours' secret keys; with ``reconstruction_threshold``
   shares per site the coordinator removes every mask (a site that dropped after sharing its
   keys leaves pair masks behind, rebuilt from its key's shares) and gets the sums only.

The weighted mean is rebuilt per array (sum / its weight: ``fedavg-partial``'s sites that
lack an array send weight 0) and handed to the strategy as each survivor's reply, so every
strategy whose aggregate is a weighted mean (``config.SECURE_STRATEGIES``) runs unchanged.
Metrics (loss, rows, privacy spend) stay in the clear, as without secure aggregation.
Threat model: an honest-but-curious coordinator (Flower's SecAgg+ model); a site answers
each stage once per round, in order, and refuses a plain train message in a secure run.
Masks come from Flower's ``pseudo_rand_gen``, which folds each 32-byte seed into a 32-bit
numpy seed: one mask alone has 2**32 candidates, a site's masked vector one per mask jointly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from medfed.config import NODE_PARTITION_ID, ExperimentConfig, SecAggConfig
from medfed.errors import MedFedError
from medfed.federation import messages
from medfed.seeds import globals_seeded

log = logging.getLogger("medfed.secagg")
MOD_RANGE = 2**62  # masks and sums live in Z_M (int64 arithmetic wraps mod 2**64, M divides it)
SITE_STATE = "secagg-state"  # the site's protocol state in its Context
VECTOR = "vector"
Send = Callable[[list[Message]], list[Message]]


# --- shared by both sides ---------------------------------------------------------------------

def plan_sizes(secagg: SecAggConfig, n_sites: int) -> tuple[int, int]:
    """(num_shares, threshold) for ``n_sites`` sampled sites: shares cap at the sites (odd for
    a symmetric ring), the threshold defaults to a majority of the shares."""
    shares = n_sites if secagg.num_shares is None else min(secagg.num_shares, n_sites)
    if shares < n_sites and shares % 2 == 0:
        shares += 1
    threshold = secagg.reconstruction_threshold or shares // 2 + 1
    return shares, max(threshold, 2)


def layout(arrays: ArrayRecord) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """The masked vector's arrays: (key, shape, dtype) in the global model's order."""
    out = []
    for key, array in arrays.items():
        value = array.numpy()
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise MedFedError(f"secure aggregation: array {key!r} has dtype {value.dtype}",
                              fix="set strategy.secure: none for this model")
        out.append((key, value.shape, value.dtype))
    return out


def vector_length(arrays: ArrayRecord) -> int:
    """Weights (one per array), the clipped count, then every element."""
    return len(arrays) + 1 + sum(int(np.prod(shape)) for _, shape, _ in layout(arrays))


def mask(seed: bytes, length: int) -> np.ndarray:
    """Flower's seeded mask: ``length`` int64 values in [0, MOD_RANGE)."""
    return pseudo_rand_gen(seed, MOD_RANGE, [(length,)])[0]


def pair_seed(secret_key: ec.EllipticCurvePrivateKey, public_key: bytes) -> bytes:
    """The pair's shared secret (Flower's ECDH + HKDF): a mask seed or a Fernet key."""
    return generate_shared_key(secret_key, bytes_to_public_key(public_key))


def key_scalar(secret_key: bytes) -> bytes:
    """A PEM secret key's private scalar: what is Shamir-shared (6x shorter than the PEM,
    and Flower's Shamir costs grow with the secret's length)."""
    key = bytes_to_private_key(secret_key)
    return key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")


def key_from_scalar(scalar: bytes, public_key: bytes) -> ec.EllipticCurvePrivateKey:
    """The secret key rebuilt from its scalar, on the curve of a public key."""
    curve = bytes_to_public_key(public_key).curve
    return ec.derive_private_key(int.from_bytes(scalar, "big"), curve)


def _config(stage: str, rnd: int, **fields: Any) -> ConfigRecord:
    return ConfigRecord({Key.STAGE: stage, messages.SERVER_ROUND: rnd, **fields})


# --- the site ---------------------------------------------------------------------------------

@dataclass
class SiteState:
    """What a site keeps between the stages of one round (in its ``Context.state``)."""

    round: int = 0
    stage: str = Stage.UNMASK
    node: int = 0
    threshold: int = 0
    num_shares: int = 0
    sk1: bytes = b""
    pk1: bytes = b""
    sk2: bytes = b""
    pk2: bytes = b""
    seed: bytes = b""
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    seed_shares: dict[int, bytes] = field(default_factory=dict)
    key_shares: dict[int, bytes] = field(default_factory=dict)

    def to_record(self) -> ConfigRecord:
        scalars = {k: getattr(self, k) for k in ("round", "stage", "node", "threshold",
                                                 "num_shares", "sk1", "pk1", "sk2", "pk2",
                                                 "seed")}
        return ConfigRecord({**scalars, "peers": list(self.peers),
                             "peer_pk1": [v[0] for v in self.peers.values()],
                             "peer_pk2": [v[1] for v in self.peers.values()],
                             "seed_share_nodes": list(self.seed_shares),
                             "seed_shares": list(self.seed_shares.values()),
                             "key_share_nodes": list(self.key_shares),
                             "key_shares": list(self.key_shares.values())})

    @classmethod
    def from_record(cls, record: ConfigRecord | None) -> SiteState:
        if record is None:
            return cls()
        state = cls(**{k: record[k] for k in ("round", "stage", "node", "threshold",
                                             "num_shares", "sk1", "pk1", "sk2", "pk2", "seed")})
        state.peers = {int(n): (a, b) for n, a, b in zip(
            record["peers"], record["peer_pk1"], record["peer_pk2"], strict=True)}
        state.seed_shares = dict(zip(record["seed_share_nodes"], record["seed_shares"],
                                     strict=True))
        state.key_shares = dict(zip(record["key_share_nodes"], record["key_shares"],
                                    strict=True))
        return state


class Refused(Exception):
    """A request the protocol does not allow at this point: the site answers with an error."""


_NEXT = {Stage.SHARE_KEYS: Stage.SETUP, Stage.COLLECT_MASKED_VECTORS: Stage.SHARE_KEYS,
         Stage.UNMASK: Stage.COLLECT_MASKED_VECTORS}


def _advance(state: SiteState, stage: str, rnd: int) -> None:
    """Stages run in order, once each, within one round; setup may always start over."""
    if stage != Stage.SETUP and (state.round != rnd or state.stage != _NEXT.get(stage)):
        raise Refused(f"secure aggregation: {stage} of round {rnd} after {state.stage} of "
                      f"round {state.round}")
    state.stage, state.round = stage, rnd


def _load(context: Context) -> SiteState:
    return SiteState.from_record(context.state.config_records.get(SITE_STATE))


def _save(context: Context, state: SiteState) -> None:
    context.state.config_records[SITE_STATE] = state.to_record()


def _refusal(msg: Message, reason: str) -> Message:
    log.warning("%s", reason)
    return Message(error=Error(messages.SECAGG_REFUSED, reason), reply_to=msg)


def site_stage(msg: Message, context: Context, secagg: SecAggConfig) -> Message:
    """``query.secagg``: the setup, share-keys and unmask stages of this site."""
    record = msg.content[messages.SECAGG]
    stage, rnd = str(record[Key.STAGE]), int(record[messages.SERVER_ROUND])
    state = _load(context)
    try:
        _advance(state, stage, rnd)
        handler = {Stage.SETUP: _setup, Stage.SHARE_KEYS: _share_keys,
                   Stage.UNMASK: _unmask}.get(stage)
        if handler is None:
            raise Refused(f"secure aggregation: stage {stage!r} is not a query")
        if stage == Stage.SETUP:
            state.node = int(msg.metadata.dst_node_id)
        reply = handler(state, record, secagg)
    except Refused as exc:
        return _refusal(msg, str(exc))
    _save(context, state)
    return Message(RecordDict({messages.SECAGG: ConfigRecord(reply)}), reply_to=msg)


def _setup(state: SiteState, record: ConfigRecord, secagg: SecAggConfig) -> dict[str, Any]:
    shares, threshold = int(record[Key.SHARE_NUMBER]), int(record[Key.THRESHOLD])
    _, floor = plan_sizes(secagg, int(record[Key.SAMPLE_NUMBER]))
    if threshold < floor:  # the coordinator may not weaken what the experiment promised
        raise Refused(f"secure aggregation: threshold {threshold} is below the {floor} this "
                      "experiment's strategy.secagg sets")
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    state.sk1, state.pk1 = private_key_to_bytes(sk1), public_key_to_bytes(pk1)
    state.sk2, state.pk2 = private_key_to_bytes(sk2), public_key_to_bytes(pk2)
    state.num_shares, state.threshold = shares, threshold
    state.peers, state.seed_shares, state.key_shares = {}, {}, {}
    return {Key.PUBLIC_KEY_1: state.pk1, Key.PUBLIC_KEY_2: state.pk2}


def _share_keys(state: SiteState, record: ConfigRecord, _: SecAggConfig) -> dict[str, Any]:
    peers = {int(k): (v[0], v[1]) for k, v in record.items()
             if k not in (Key.STAGE, messages.SERVER_ROUND)}
    if len(peers) < state.threshold or len(peers) > state.num_shares:
        raise Refused(f"secure aggregation: {len(peers)} neighbours, the threshold is "
                      f"{state.threshold} and the shares {state.num_shares}")
    keys = [k for pair in peers.values() for k in pair]
    if len(set(keys)) != len(keys) or peers.get(state.node) != (state.pk1, state.pk2):
        raise Refused("secure aggregation: duplicate or altered public keys")
    state.peers, state.seed = peers, os.urandom(32)
    seed_shares = create_shares(state.seed, state.threshold, state.num_shares)
    key_shares = create_shares(key_scalar(state.sk1), state.threshold, state.num_shares)
    sk2 = bytes_to_private_key(state.sk2)
    destinations, ciphertexts = [], []
    for index, (node, (_, pk2)) in enumerate(peers.items()):
        if node == state.node:
            state.seed_shares[node], state.key_shares[node] = seed_shares[index], key_shares[index]
            continue
        plaintext = share_keys_plaintext_concat(state.node, node, seed_shares[index],
                                                key_shares[index])
        destinations.append(node)
        ciphertexts.append(encrypt(pair_seed(sk2, pk2), plaintext))
    return {Key.DESTINATION_LIST: destinations, Key.CIPHERTEXT_LIST: ciphertexts}


def _unmask(state: SiteState, record: ConfigRecord, _: SecAggConfig) -> dict[str, Any]:
    active = [int(n) for n in record[Key.ACTIVE_NODE_ID_LIST]]
    dead = [int(n) for n in record[Key.DEAD_NODE_ID_LIST]]
    if set(active) & set(dead) or state.node in dead or len(active) < state.threshold:
        raise Refused("secure aggregation: an unmask request that would reveal a site")
    missing = [n for n in active if n not in state.seed_shares] + [
        n for n in dead if n not in state.key_shares]
    if missing:
        raise Refused(f"secure aggregation: no shares held for node(s) {missing}")
    shares = [state.seed_shares[n] for n in active] + [state.key_shares[n] for n in dead]
    return {Key.NODE_ID_LIST: active + dead, Key.SHARE_LIST: shares}


Experiment = Callable[[Context], ExperimentConfig]


def stage_handler(experiment: Experiment) -> Callable[[Message, Context], Message]:
    """The ``query.secagg`` handler; ``experiment(context)``: the run's config."""

    def handle(msg: Message, context: Context) -> Message:
        return site_stage(msg, context, experiment(context).strategy.secagg)

    return handle


def secagg_mod(experiment: Experiment) -> Callable:
    """The train handler's mod: in a secure run, train inside the collect stage and answer with
    the masked vector only; a plain train message is refused."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        cfg = experiment(context)
        if cfg.strategy.secure == "none":
            return call_next(msg, context)
        if messages.SECAGG not in msg.content:
            return _refusal(msg, "this experiment uses secure aggregation: the site sends no "
                                 "update in the clear")
        state = _load(context)
        record = msg.content[messages.SECAGG]
        try:
            _advance(state, Stage.COLLECT_MASKED_VECTORS, int(record[messages.SERVER_ROUND]))
            peers = _receive_shares(state, record)
        except Refused as exc:
            return _refusal(msg, str(exc))
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        weight = int(reply.content[messages.METRICS][messages.NUM_EXAMPLES])
        partition = context.node_config.get(NODE_PARTITION_ID)
        # Flower's stochastic rounding draws from numpy's global generator: seeded in
        # simulation (reproducible runs), unseeded at a real site
        with globals_seeded(cfg.seed if partition is not None else None, "secagg",
                            partition, state.round):
            plain = encode_update(msg.content[messages.ARRAYS], reply.content[messages.ARRAYS],
                                  weight, cfg.strategy.secagg)
        vector = masked_vector(state, peers, plain)
        _save(context, state)
        content = RecordDict({messages.METRICS: reply.content[messages.METRICS],
                              messages.SECAGG_MASKED: ArrayRecord({VECTOR: Array(vector)})})
        return Message(content, reply_to=msg)

    return mod


def _receive_shares(state: SiteState, record: ConfigRecord) -> list[int]:
    """Decrypt the shares the neighbours sent; the nodes to mask with (they hold ours)."""
    sources = [int(n) for n in record[Key.SOURCE_LIST]]
    if len(sources) + 1 < state.threshold:
        raise Refused(f"secure aggregation: {len(sources)} neighbours left, fewer than the "
                      f"threshold {state.threshold}")
    sk2 = bytes_to_private_key(state.sk2)
    for source, ciphertext in zip(sources, record[Key.CIPHERTEXT_LIST], strict=True):
        if source not in state.peers or source == state.node:
            raise Refused(f"secure aggregation: shares from node {source}, not a neighbour")
        plain = decrypt(pair_seed(sk2, state.peers[source][1]), ciphertext)
        sender, receiver, seed_share, key_share = share_keys_plaintext_separate(plain)
        if sender != source or receiver != state.node:
            raise Refused(f"secure aggregation: shares from {sender} to {receiver} forwarded "
                          f"as from {source} to {state.node}")
        state.seed_shares[source], state.key_shares[source] = seed_share, key_share
    return sources


def encode_update(received: ArrayRecord, trained: ArrayRecord, weight: int,
                  secagg: SecAggConfig) -> np.ndarray:
    """``[weight per array, clipped count, weight * update]`` as int64 (unmasked), shape
    ``(vector_length(received),)``. Float updates are clipped to +-clipping_range and
    quantised (Flower's stochastic rounding to [0, quantization_range]); integer buffers
    (BatchNorm's step counter) are sent exactly. Arrays the site did not send: weight 0."""
    weights, parts, clipped = [], [], 0
    for key, shape, dtype in layout(received):
        if key not in trained:
            weights.append(0)
            parts.append(np.zeros(int(np.prod(shape)), np.int64))
            continue
        delta = trained[key].numpy().astype(np.float64) - received[key].numpy()
        if np.issubdtype(dtype, np.integer):
            level = np.rint(delta).astype(np.int64).ravel()
        else:
            clipped += int(np.count_nonzero(np.abs(delta) > secagg.clipping_range))
            level = quantize([delta.ravel()], secagg.clipping_range,
                             secagg.quantization_range)[0].astype(np.int64)
        weights.append(weight)
        parts.append(weight * level)
    return np.concatenate([np.asarray([*weights, clipped], np.int64), *parts])


def masked_vector(state: SiteState, peers: list[int], plain: np.ndarray) -> np.ndarray:
    """``plain`` + own mask + (or -) a mask per neighbour, mod MOD_RANGE (shape kept)."""
    vector = plain + mask(state.seed, plain.size)
    sk1 = bytes_to_private_key(state.sk1)
    for node in peers:
        pairwise = mask(pair_seed(sk1, state.peers[node][0]), plain.size)
        vector = vector + pairwise if state.node > node else vector - pairwise
    return vector & (MOD_RANGE - 1)


# --- the coordinator --------------------------------------------------------------------------

@dataclass
class Round:
    """The coordinator's view of one secure round."""

    rnd: int
    secagg: SecAggConfig
    sampled: list[int]
    num_shares: int = 0
    threshold: int = 0
    neighbours: dict[int, set[int]] = field(default_factory=dict)
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    keyed: set[int] = field(default_factory=set)  # completed share-keys: their shares exist
    active: set[int] = field(default_factory=set)

    def query(self, stage: str, node: int, **fields: Any) -> Message:
        return Message(RecordDict({messages.SECAGG: _config(stage, self.rnd, **fields)}),
                       dst_node_id=node, message_type=messages.SECAGG_MESSAGE,
                       group_id=str(self.rnd))

    def check(self, what: str) -> None:
        """Every site whose masks may need removing keeps ``threshold`` live neighbours."""
        for node in self.keyed or self.active:
            live = self.neighbours[node] & self.active
            if len(live) < self.threshold:
                raise MedFedError(f"round {self.rnd}: secure aggregation stopped after {what}: "
                                  f"node {node} has {len(live)} live neighbour(s), the "
                                  f"reconstruction threshold is {self.threshold}",
                                  fix="bring the sites back and resume, or lower "
                                      "strategy.secagg.reconstruction_threshold")


def ring(nodes: list[int], num_shares: int) -> dict[int, set[int]]:
    """Each node's neighbours, itself included: the ``num_shares`` nearest on a ring."""
    half, n = num_shares // 2, len(nodes)
    if num_shares >= n:
        return {node: set(nodes) for node in nodes}
    return {node: {nodes[(i + k) % n] for k in range(-half, half + 1)}
            for i, node in enumerate(nodes)}


def _answered(replies: list[Message], expected: set[int], what: str) -> dict[int, Message]:
    good = {}
    for reply in replies:
        node = int(reply.metadata.src_node_id)
        if reply.has_error():
            log.warning("site %s dropped out of secure aggregation at %s: %s", node, what,
                        reply.error.reason)
        elif node in expected:
            good[node] = reply
    return good


@dataclass
class SecureResult:
    """The strategy's replies (each survivor's metrics with the aggregate as its arrays, and
    the sites' error replies) and what the round's history records."""

    replies: list[Message]
    record: dict[str, Any]


def secure_train(batch: list[Message], send: Send, rnd: int, arrays: ArrayRecord,
                 secagg: SecAggConfig, total_weight: int) -> SecureResult:
    """Run ``batch`` (the strategy's train messages) through the four SecAgg+ stages.

    ``send``: the round loop's exchange; ``arrays``: the global model the batch carries;
    ``total_weight``: the federation's training rows (bounds the sums: no wrap-around).
    """
    if total_weight * secagg.quantization_range >= MOD_RANGE:
        raise MedFedError(f"secure aggregation: {total_weight} rows x quantization_range "
                          f"{secagg.quantization_range} overflows 2**62",
                          fix="lower strategy.secagg.quantization_range")
    state = Round(rnd, secagg, sorted(int(m.metadata.dst_node_id) for m in batch))
    if len(state.sampled) < 2:
        raise MedFedError(f"round {rnd}: secure aggregation needs at least 2 sites, "
                          f"{len(state.sampled)} sampled", fix="raise strategy.min_sites to 2")
    _setup_stage(state, send)
    forwards = _share_keys_stage(state, send)
    total, replies = _collect_stage(state, send, batch, forwards, arrays)
    dropped = sorted(state.keyed - state.active)
    total = _unmask_stage(state, send, total, arrays)
    aggregate, clipped = decode(total, arrays, secagg)
    if clipped:
        log.warning("round %d: %d update values were clipped to +-%g before secure aggregation",
                    rnd, clipped, secagg.clipping_range)
    for reply in replies:
        if not reply.has_error():
            reply.content = RecordDict({messages.ARRAYS: aggregate,
                                        messages.METRICS: reply.content[messages.METRICS]})
    record = {"secure_aggregation": {"sites": len(state.active), "dropped_after_keys": dropped,
                                     "threshold": state.threshold,
                                     "num_shares": state.num_shares, "clipped": clipped}}
    return SecureResult(replies, record)


def _setup_stage(state: Round, send: Send) -> None:
    state.num_shares, state.threshold = plan_sizes(state.secagg, len(state.sampled))
    if state.threshold > state.num_shares:
        raise MedFedError(f"round {state.rnd}: reconstruction_threshold {state.threshold} "
                          f"exceeds the {state.num_shares} shares of {len(state.sampled)} "
                          "sampled sites", fix="lower strategy.secagg.reconstruction_threshold")
    state.neighbours = ring(state.sampled, state.num_shares)
    fields = {Key.SAMPLE_NUMBER: len(state.sampled), Key.SHARE_NUMBER: state.num_shares,
              Key.THRESHOLD: state.threshold}
    replies = _answered(send([state.query(Stage.SETUP, n, **fields) for n in state.sampled]),
                        set(state.sampled), Stage.SETUP)
    for node, reply in replies.items():
        record = reply.content[messages.SECAGG]
        state.public_keys[node] = (record[Key.PUBLIC_KEY_1], record[Key.PUBLIC_KEY_2])
    state.active = set(replies)
    state.check(Stage.SETUP)


def _share_keys_stage(state: Round, send: Send) -> dict[int, tuple[list[int], list[bytes]]]:
    """Public keys out, encrypted shares in; returns per node (sources, ciphertexts)."""
    batch = []
    for node in sorted(state.active):
        peers = sorted(state.neighbours[node] & state.active)
        keys = {str(p): list(state.public_keys[p]) for p in peers}
        batch.append(state.query(Stage.SHARE_KEYS, node, **keys))
    replies = _answered(send(batch), state.active, Stage.SHARE_KEYS)
    state.active = state.keyed = set(replies)
    forwards: dict[int, tuple[list[int], list[bytes]]] = {n: ([], []) for n in state.active}
    for source, reply in sorted(replies.items()):
        record = reply.content[messages.SECAGG]
        for dst, ciphertext in zip(record[Key.DESTINATION_LIST], record[Key.CIPHERTEXT_LIST],
                                   strict=True):
            if int(dst) in forwards and int(dst) in state.neighbours[source]:
                forwards[int(dst)][0].append(source)
                forwards[int(dst)][1].append(ciphertext)
    state.check(Stage.SHARE_KEYS)
    return forwards


def _collect_stage(state: Round, send: Send, batch: list[Message],
                   forwards: dict[int, tuple[list[int], list[bytes]]],
                   arrays: ArrayRecord) -> tuple[np.ndarray, list[Message]]:
    """The train messages with the forwarded shares; the masked vectors' sum (mod 2**62)."""
    out = []
    for msg in batch:
        node = int(msg.metadata.dst_node_id)
        if node not in state.active:
            continue
        sources, ciphertexts = forwards[node]
        record = _config(Stage.COLLECT_MASKED_VECTORS, state.rnd,
                         **{Key.SOURCE_LIST: sources, Key.CIPHERTEXT_LIST: ciphertexts})
        out.append(Message(RecordDict({**msg.content, messages.SECAGG: record}),
                           dst_node_id=node, message_type=msg.metadata.message_type,
                           group_id=str(state.rnd)))
    replies = send(out)
    good = _answered(replies, state.active, "training")
    total = np.zeros(vector_length(arrays), np.int64)
    for node, reply in sorted(good.items()):
        vector = reply.content[messages.SECAGG_MASKED][VECTOR].numpy()
        if vector.shape != total.shape or vector.dtype != np.int64:
            raise MedFedError(f"round {state.rnd}: node {node} sent a masked vector of shape "
                              f"{vector.shape}, {vector.dtype}; expected {total.shape}, int64")
        total = total + vector  # int64 wrap-around is arithmetic mod 2**64
    state.active = set(good)
    state.check("training")
    kept = [r for r in replies if r.has_error() or int(r.metadata.src_node_id) in good]
    # by node: the strategy's float sums over identical arrays then run in a fixed order
    kept.sort(key=lambda r: (r.has_error(), int(r.metadata.src_node_id)))
    return total & (MOD_RANGE - 1), kept


def _unmask_stage(state: Round, send: Send, total: np.ndarray, arrays: ArrayRecord
                  ) -> np.ndarray:
    """Collect shares, rebuild every mask still in ``total`` and remove it."""
    dead = state.keyed - state.active
    batch = [state.query(Stage.UNMASK, node,
                         **{Key.ACTIVE_NODE_ID_LIST: sorted(state.neighbours[node] & state.active),
                            Key.DEAD_NODE_ID_LIST: sorted(state.neighbours[node] & dead)})
             for node in sorted(state.active)]
    shares: dict[int, list[bytes]] = {n: [] for n in state.keyed}
    for reply in _answered(send(batch), state.active, Stage.UNMASK).values():
        record = reply.content[messages.SECAGG]
        for owner, share in zip(record[Key.NODE_ID_LIST], record[Key.SHARE_LIST], strict=True):
            shares[int(owner)].append(share)
    for node, held in sorted(shares.items()):
        if len(held) < state.threshold:
            raise MedFedError(f"round {state.rnd}: secure aggregation got {len(held)} share(s) "
                              f"of node {node}, {state.threshold} needed to unmask",
                              fix="bring the sites back and resume")
        secret = combine_shares(held[:state.threshold])  # any threshold of them suffice
        if node in state.active:
            total = total - mask(secret, total.size)
            continue
        dropped = key_from_scalar(secret, state.public_keys[node][0])
        for peer in sorted(state.neighbours[node] & state.active):  # the dropped site's pairs
            pairwise = mask(pair_seed(dropped, state.public_keys[peer][0]), total.size)
            total = total + pairwise if node > peer else total - pairwise
    return total & (MOD_RANGE - 1)


def decode(total: np.ndarray, arrays: ArrayRecord, secagg: SecAggConfig
           ) -> tuple[ArrayRecord, int]:
    """The weighted mean of the sites' arrays from the unmasked sums (shape of ``total``:
    ``(vector_length(arrays),)``); an array no site sent keeps its global value."""
    keys = layout(arrays)
    weights, clipped = total[:len(keys)], int(total[len(keys)])
    signed = np.where(total >= MOD_RANGE // 2, total - MOD_RANGE, total)
    step = 2 * secagg.clipping_range / secagg.quantization_range
    offset, out = len(keys) + 1, {}
    for (key, shape, dtype), weight in zip(keys, weights, strict=True):
        size = int(np.prod(shape))
        block, offset = signed[offset:offset + size], offset + size
        current = arrays[key].numpy()
        if weight == 0:
            out[key] = Array(current)
            continue
        integer = np.issubdtype(dtype, np.integer)
        delta = block / weight if integer else block / weight * step - secagg.clipping_range
        value = current.astype(np.float64) + delta.reshape(shape)
        out[key] = Array(np.asarray(np.rint(value) if integer else value, dtype=dtype))
    return ArrayRecord(out), clipped


def describe(strategy: dict[str, Any]) -> str:
    """One line for report.md and the model card: was secure aggregation used, and how."""
    if strategy.get("secure", "none") == "none":
        return "none (the coordinator saw each site's update)"
    options = strategy.get("secagg") or {}
    threshold = options.get("reconstruction_threshold") or "a majority of the shares"
    return (f"SecAgg+ (the coordinator saw only the weighted sum of the sites' updates; "
            f"reconstruction threshold {threshold}, updates clipped to "
            f"+-{options.get('clipping_range')} and quantised to "
            f"{options.get('quantization_range')} levels)")
