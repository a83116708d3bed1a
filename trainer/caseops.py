"""CaseOps (``lossless_caps_caseops_v1``): the lossless case transform of the 2026-04-19..04-27 records,
and the original-byte count of each token it yields (pure: no I/O, no torch).

The transform lowercases ASCII letters and says where the capitals were with four private-use
characters, so a tokenizer reuses one lowercase subword for "the", "The" and "THE":

* a maximal run of ASCII letters (a *word*) that is all lowercase stays as it is;
* a word of two or more letters, all capitals: ALLCAPS, then the word lowercased;
* any other word: TITLE when its first letter is a capital (so a lone capital is TITLE + its
  letter), then its first letter lowercased, then each later letter lowercased with a CAPNEXT
  before each one that was a capital ("McDonald" -> TITLE m c CAPNEXT d o n a l d);
* one of the four marker characters in the text itself: ESC, then that character;
* everything else (digits, punctuation, spaces, non-ASCII letters) stays as it is.

The markers are U+E001 TITLE, U+E002 ALLCAPS, U+E003 CAPNEXT, U+E004 ESC; the records' tokenizer
(fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model) holds each as a piece of its own.

bpb is counted on the original text: a token's bytes are the UTF-8 bytes of the original text
that its piece stands for (``original_byte_counts``). A marker stands for none (the case it
carries is in its letter), ESC for none (its character carries the bytes), every other character
for its own UTF-8 length (a lowercased letter is one byte, as its capital was). The pieces are
SentencePiece's surfaces: the stretch of the transformed text each token covers, so text that the
tokenizer's normalizer folds ("ﬁ" read as "fi") still counts its original bytes, and whitespace it
drops (at a document's ends) counts in no token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

TITLE = "\ue001"
ALLCAPS = "\ue002"
CAPNEXT = "\ue003"
ESC = "\ue004"
MARKERS = (TITLE, ALLCAPS, CAPNEXT, ESC)

# a word with a capital (a lowercase one stays as it is, so it is never matched: about 2x faster on English) | a marker
_CASED_WORD_OR_MARKER = re.compile("(?<![A-Za-z])[A-Za-z]*[A-Z][A-Za-z]*|[\ue001-\ue004]")
_MARKER = re.compile("[\ue001-\ue004]")
# one item of transformed text: an escaped character | an optionally marked word | a stray marker | other text
_ITEM = re.compile("\ue004(.)|([\ue001\ue002]?)((?:\ue003?[a-z])+)|([\ue001-\ue004])|([^\ue001-\ue004a-z]+)", re.DOTALL)
_MARKER_BYTES = len(TITLE.encode("utf-8"))  # 3, the same for all four


class CaseOpsError(ValueError):
    """Text that is not the CaseOps form of any text."""


def _word(word: str) -> str:
    lower = word.lower()
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + lower
    head = (TITLE if word[0].isupper() else "") + lower[0]
    return head + "".join(CAPNEXT + c.lower() if c.isupper() else c for c in word[1:])


def _item(m: re.Match[str]) -> str:
    s = m.group()
    return ESC + s if s in MARKERS else _word(s)


def encode(text: str) -> str:
    """The CaseOps form of ``text`` (module docstring)."""
    return _CASED_WORD_OR_MARKER.sub(_item, text)


def decode(text: str) -> str:
    """The original text of a CaseOps form; CaseOpsError unless ``text`` is exactly ``encode`` of it
    (a marker with no letter after it, a dangling ESC, a capital letter, a marker where the encoder
    would not put one)."""
    out: list[str] = []
    for m in _ITEM.finditer(text):
        escaped, mark, body, stray, plain = m.groups()
        if escaped is not None:
            out.append(escaped)
        elif body is not None:
            letters = [c.upper() if i and body[i - 1] == CAPNEXT else c for i, c in enumerate(body) if c != CAPNEXT]
            if mark == ALLCAPS:
                letters = [c.upper() for c in letters]
            elif mark == TITLE:
                letters[0] = letters[0].upper()
            out.append("".join(letters))
        elif stray is not None:
            raise CaseOpsError(f"marker U+{ord(stray):04X} at {m.start()} is not followed by a letter")
        else:
            out.append(plain)
    original = "".join(out)
    if encode(original) != text:
        raise CaseOpsError("not the CaseOps form of any text (a marker or letter where the transform puts none)")
    return original


def original_byte_counts(surfaces: Iterable[str]) -> list[int]:
    """UTF-8 bytes of the original text behind each piece of a CaseOps text, in order: markers 0, an
    escaped marker its own 3, every other character its UTF-8 length. ``surfaces`` are SentencePiece's
    surfaces of the tokens (an ESC and the character it escapes may fall in different pieces)."""
    counts: list[int] = []
    escaping = False  # the previous piece ended with an ESC
    for s in surfaces:
        n = len(s.encode("utf-8"))
        if escaping or _MARKER.search(s):
            for ch in s:
                if escaping:
                    escaping = False  # the escaped character counts its bytes, as any character does
                elif ch in MARKERS:
                    n -= _MARKER_BYTES
                    escaping = ch == ESC
        counts.append(n)
    if escaping:
        raise CaseOpsError("the last piece ends with an ESC that escapes nothing")
    return counts


def surfaces(text: str, offsets: Sequence[tuple[int, int]]) -> list[str]:
    """The piece surfaces of ``text`` from SentencePiece's character offsets of each token."""
    return [text[a:b] for a, b in offsets]
