"""One prepared example as bytes in an ArrayRecord shard: a msgpack dict of numpy arrays and strings.

msgpack (through flax.serialization) restores arrays without pickle, so
reading a dataset never runs code from it.
"""

from flax import serialization


def encode(example):
    return serialization.msgpack_serialize(example)


def decode(data):
    return serialization.msgpack_restore(data)
