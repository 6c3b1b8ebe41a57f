"""Plain-data encoding of Python values, shared by the host and the sandboxed program.

JSON cannot tell a tuple from a list, holds no sets, complex numbers or NaN, and unpickling what an untrusted
program wrote would run its code in the lab's process. So values cross the sandbox boundary as JSON with tags:

    list -> [...]          tuple -> {"t": [...]}      set -> {"s": [...]}     frozenset -> {"fs": [...]}
    dict -> {"d": [[k, v], ...]}    complex -> {"c": [re, im]}    bytes -> {"b": "<hex>"}
    float nan/inf -> {"f": "nan" | "inf" | "-inf"}   anything else -> {"r": "<type>: <repr, cut>"}
    a value whose encoding is longer than MAX_CHARS -> {"h": "<sha256>", "n": <length>}  (compared by digest)

Decoding builds only these plain types, so reading a program's output never runs its code.
This file imports only the standard library: its source is also copied verbatim into every sandboxed harness.
"""

import hashlib
import json
import math

MAX_CHARS = 1_000_000  # one value's encoding; longer ones travel as a digest
REPR_CHARS = 200


def _tag(value, depth=0):
    if depth > 100:  # a self-referencing or absurdly nested value
        return {"r": f"{type(value).__name__}: <nested too deep>"}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)  # bool subclasses are handled above; int subclasses become plain ints
    if isinstance(value, float):
        return {"f": repr(float(value))} if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, list):
        return [_tag(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return {"t": [_tag(v, depth + 1) for v in value]}
    if isinstance(value, (set, frozenset)):
        items = [_tag(v, depth + 1) for v in value]
        items.sort(key=lambda x: json.dumps(x, sort_keys=True))  # sets have no order: sort so digests agree
        return {"fs" if isinstance(value, frozenset) else "s": items}
    if isinstance(value, dict):
        return {"d": [[_tag(k, depth + 1), _tag(v, depth + 1)] for k, v in value.items()]}
    if isinstance(value, complex):
        return {"c": [_tag(value.real), _tag(value.imag)]}
    if isinstance(value, (bytes, bytearray)):
        return {"b": bytes(value).hex()}
    try:
        text = repr(value)
    except Exception:
        text = "<repr failed>"
    return {"r": f"{type(value).__name__}: {text[:REPR_CHARS]}"}


def encode(value) -> str:
    """One line of JSON; a digest when the value is too large to ship."""
    text = json.dumps(_tag(value), separators=(",", ":"))
    if len(text) > MAX_CHARS:
        return json.dumps({"h": hashlib.sha256(text.encode()).hexdigest(), "n": len(text)})
    return text


def _untag(obj):
    if isinstance(obj, list):
        return [_untag(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    (tag, body), = obj.items() if len(obj) == 1 else (("h", obj),)
    if tag == "t":
        return tuple(_untag(v) for v in body)
    if tag == "s":
        return set(_untag(v) for v in body)
    if tag == "fs":
        return frozenset(_untag(v) for v in body)
    if tag == "d":
        return {_untag(k): _untag(v) for k, v in body}
    if tag == "c":
        return complex(_untag(body[0]), _untag(body[1]))
    if tag == "b":
        return bytes.fromhex(body)
    if tag == "f":
        return float(body)
    if tag == "h":
        return Digest(str(body.get("h")), int(body.get("n", 0)))
    if tag == "r":
        return Opaque(str(body))
    raise ValueError(f"encoded value: unknown tag {tag!r}; known: t, s, fs, d, c, b, f, h, r")


def decode(text: str):
    """The value `encode` wrote (tuples, sets, dicts... rebuilt); Digest/Opaque for digests and unknown types."""
    return _untag(json.loads(text))


class Digest(tuple):
    """A value too large to ship: equal only to the same digest."""

    def __new__(cls, sha: str, n: int):
        return super().__new__(cls, ("digest", sha, n))

    def __repr__(self):
        return f"<value of {self[2]} encoded chars>"


class Opaque(str):
    """A value of a type the codec does not know, kept as "<type>: <repr>"."""

    def __repr__(self):
        return f"<{str.__str__(self)}>"
