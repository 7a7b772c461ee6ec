"""Input novelty: a Bloom filter of the words of a model version's training prompts.

The factory builds it from the training split (``controller/factory/stages/signal_reference.py``) and ships it
in the version's ``drift_reference.json`` (a file of the variant, so its sha256 is in the signed manifest); the
agent reads it without torch or the controller and measures, per request, the share of the prompt's words
the training data never contained. A few KB hold thousands of words at a false-positive rate below 1%: a
false positive only makes a new word look known, so novelty errs low, never high.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Iterable

from shared.errors import InvalidArgument

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
DEFAULT_BITS = 32_768  # 4 KiB
MAX_BITS = 1 << 20  # 128 KiB: a sketch from the network is refused beyond this


def words(text: str) -> list[str]:
    """The words of ``text``: runs of letters or digits, lower-cased; digits alone count as one token ``<num>``
    (room numbers and times change in every prompt, they say nothing about novelty)."""
    return ["<num>" if w.isdigit() else w for w in (m.lower() for m in _WORD.findall(text))]


class BloomFilter:
    """``bits`` bits, ``hashes`` positions per item (double hashing of one BLAKE2b digest)."""

    def __init__(self, bits: int = DEFAULT_BITS, hashes: int = 4, data: bytes | None = None) -> None:
        if not 8 <= bits <= MAX_BITS or bits % 8:
            raise InvalidArgument(f"a Bloom filter needs 8..{MAX_BITS} bits, a multiple of 8; got {bits}")
        if not 1 <= hashes <= 16:
            raise InvalidArgument(f"a Bloom filter needs 1..16 hashes, got {hashes}")
        self.bits, self.hashes = bits, hashes
        if data is not None and len(data) != bits // 8:
            raise InvalidArgument(f"Bloom filter data holds {len(data)} bytes, {bits // 8} expected")
        self._array = bytearray(data if data is not None else bits // 8)
        self.count = 0

    @classmethod
    def sized_for(cls, items: int, fp_rate: float = 0.01) -> BloomFilter:
        """The smallest filter (at least 1 KiB, a multiple of 8 bits) for ``items`` at ``fp_rate``."""
        bits = max(8192, math.ceil(-items * math.log(fp_rate) / math.log(2) ** 2))
        bits = min(MAX_BITS, (bits + 7) // 8 * 8)
        hashes = max(1, min(16, round(bits / max(items, 1) * math.log(2))))
        return cls(bits, hashes)

    def _positions(self, item: str) -> list[int]:
        digest = hashlib.blake2b(item.encode(), digest_size=16).digest()
        h1, h2 = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little") | 1
        return [(h1 + i * h2) % self.bits for i in range(self.hashes)]

    def add(self, item: str) -> None:
        for p in self._positions(item):
            self._array[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def update(self, items: Iterable[str]) -> None:
        for item in items:
            self.add(item)

    def __contains__(self, item: str) -> bool:
        return all(self._array[p >> 3] & (1 << (p & 7)) for p in self._positions(item))

    def novelty(self, text: str) -> float | None:
        """Share of the words of ``text`` not in the filter (0..1); None when it has no words."""
        ws = words(text)
        if not ws:
            return None
        return sum(w not in self for w in ws) / len(ws)

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": "bloom",
            "bits": self.bits,
            "hashes": self.hashes,
            "items": self.count,
            "data": base64.b64encode(bytes(self._array)).decode(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> BloomFilter:
        if raw.get("kind") != "bloom":
            raise InvalidArgument(f"unknown novelty sketch kind {raw.get('kind')!r}; expected 'bloom'")
        try:
            data = base64.b64decode(str(raw["data"]), validate=True)
            bloom = cls(int(raw["bits"]), int(raw["hashes"]), data)  # type: ignore[call-overload]
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidArgument(f"malformed novelty sketch: {exc}") from exc
        bloom.count = int(raw.get("items", 0))  # type: ignore[call-overload]
        return bloom


def sketch_from_texts(texts: Iterable[str], fp_rate: float = 0.01) -> BloomFilter:
    """The filter of every word of ``texts``, sized for their distinct words."""
    vocab = {w for t in texts for w in words(t)}
    bloom = BloomFilter.sized_for(len(vocab), fp_rate)
    bloom.update(sorted(vocab))
    return bloom
