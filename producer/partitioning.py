"""Kafka's default partitioning of keyed records, computed for many keys at once.

A keyed record goes to ``partitions[(murmur2(key) & 0x7fffffff) % len(partitions)]`` (the sorted
partition ids of the topic): the Java client's rule, which kafka-python's ``DefaultPartitioner``
follows. The Replayer computes the partitions of a whole chunk of keys with numpy and passes them
to ``send``, instead of kafka-python hashing every key in pure Python on the send path; the records
land on exactly the partitions the default partitioner would choose (tests/test_producer_encoding.py
checks it against kafka-python's own ``murmur2`` and ``DefaultPartitioner``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_M = np.uint32(0x5BD1E995)
_SEED = 0x9747B28C


def murmur2_many(keys: Sequence[bytes]) -> np.ndarray:
    """Kafka's murmur2 hash (``org.apache.kafka.common.utils.Utils.murmur2``) of every key, as
    uint32: the same numbers as ``kafka.partitioner.default.murmur2``."""
    out = np.empty(len(keys), dtype=np.uint32)
    if not len(keys):
        return out
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    for length in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        picked = keys if len(rows) == len(keys) else [keys[i] for i in rows.tolist()]
        data = np.frombuffer(b"".join(picked), dtype=np.uint8).reshape(len(rows), length).astype(np.uint32)
        with np.errstate(over="ignore"):  # uint32 arithmetic wraps around, as Java's int does
            h = np.full(len(rows), (_SEED ^ length) & 0xFFFFFFFF, dtype=np.uint32)
            for i in range(0, length - length % 4, 4):
                k = data[:, i] | (data[:, i + 1] << 8) | (data[:, i + 2] << 16) | (data[:, i + 3] << 24)
                k *= _M
                k ^= k >> 24
                k *= _M
                h *= _M
                h ^= k
            tail, extra = length & ~3, length % 4
            if extra >= 3:
                h ^= data[:, tail + 2] << 16
            if extra >= 2:
                h ^= data[:, tail + 1] << 8
            if extra >= 1:
                h ^= data[:, tail]
                h *= _M
            h ^= h >> 13
            h *= _M
            h ^= h >> 15
        out[rows] = h
    return out


def key_partitions(keys: Sequence[bytes], partitions: Sequence[int]) -> list[int]:
    """The partition of every key among a topic's partition ids, as the default partitioner picks it."""
    ids = np.asarray(sorted(partitions), dtype=np.int64)
    if not len(ids):
        raise ValueError("a topic without partitions")
    return ids[(murmur2_many(keys) & 0x7FFFFFFF) % len(ids)].tolist()
