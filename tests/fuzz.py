"""Malformed frames of every class, for the fuzz test: each generator returns one frame."""
import os

import msgpack

from common import schema


def envelope(**fields) -> bytes:
    env = {"v": [schema.PROTOCOL_MAJOR, 0], "t": "heartbeat", "s": 0, "b": {"progress": 1}}
    env.update(fields)
    return msgpack.packb(env)


CLASSES = {
    # class -> (frame maker taking the index, the kind the receiver must report)
    "not_msgpack": (lambda i: b"\xc1" + os.urandom(8 + i % 64), "not_msgpack"),
    "truncated": (lambda i: envelope(s=i)[: 5 + i % 10], "not_msgpack"),
    "wrong_types": (lambda i: envelope(b={"progress": "lots"}), "wrong_type"),
    "missing_fields": (lambda i: envelope(b={}), "missing_field"),
    "unknown_types": (lambda i: envelope(t=f"teleport{i % 7}"), "unknown_type"),
    "oversized": (lambda i: b"\x00" * (schema.MAX_LINK_FRAME_BYTES + 1), "oversized"),
    "wrong_version": (lambda i: envelope(v=[schema.PROTOCOL_MAJOR + 1, 0]), "bad_version"),
    "bad_sequence": (lambda i: envelope(s=10_000 + i), "bad_seq"),
}
