"""trainer/caseops.py against the 2026-04-27 record's own lossless_caps.py (issue 22 items 2 and 3).

The record's module is imported from ../shared/challenge at test time (never copied into the
repository); the tests skip only when that folder is absent. Compared on real texts (the
challenge's READMEs, the smoke corpus's documents) and on hypothesis-drawn unicode: the transform's
output, and the original byte count of every token when the text is tokenized with the record's
CaseOps tokenizer, whose piece surfaces for the record's side come from SentencePiece's own proto.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings, strategies as st

from trainer import caseops
from trainer.caseops import ALLCAPS, CAPNEXT, ESC, MARKERS, TITLE, CaseOpsError
from trainer.data import smoke_documents

CHALLENGE = Path(__file__).resolve().parents[2] / ".." / "shared" / "challenge"
RECORD = CHALLENGE / "records" / "track_10min_16mb" / "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611"
TOKENIZER = RECORD / "tokenizers" / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"


@pytest.fixture(scope="module")
def record() -> ModuleType:
    """The record's lossless_caps.py, loaded under a name of its own."""
    path = RECORD / "lossless_caps.py"
    if not path.is_file():
        pytest.skip(f"record not found at {RECORD}")
    spec = importlib.util.spec_from_file_location("record_lossless_caps", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sp() -> spm.SentencePieceProcessor:
    if not TOKENIZER.is_file():
        pytest.skip(f"record tokenizer not found at {TOKENIZER}")
    return spm.SentencePieceProcessor(model_file=str(TOKENIZER))


@pytest.fixture(scope="module")
def real_texts() -> list[str]:
    """The challenge's README and every record's README (skipped without them), then the smoke documents."""
    readmes = [CHALLENGE / "README.md", *sorted(CHALLENGE.glob("records/*/*/README.md"))]
    return [p.read_text(encoding="utf-8") for p in readmes if p.is_file()] + smoke_documents()


# --- SentencePiece's proto, read without the protobuf package: the surfaces the record's exporter reads ---


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            assert wire == 1, f"wire type {wire}"
            value, i = buf[i:i + 8], i + 8
        yield number, value


def proto_pieces(sp: spm.SentencePieceProcessor, text: str) -> list[tuple[int, str]]:
    """(id, surface) of each token from SentencePieceText (pieces = 2; in a piece: id = 2, surface = 3)."""
    pieces = []
    for number, value in _fields(sp.encode(text, out_type="serialized_proto")):
        if number == 2:
            piece = dict(_fields(value))
            pieces.append((int(piece.get(2, 0)), bytes(piece.get(3, b"")).decode("utf-8")))
    return pieces


def record_counts(record: ModuleType, sp: spm.SentencePieceProcessor, transformed: str) -> tuple[list[int], list[int]]:
    """The record's per-token ids and original byte counts (its prepare_caseops_data.py's computation)."""
    pieces = proto_pieces(sp, transformed)
    counts = record.surface_piece_original_byte_counts([s for _, s in pieces], text_transform_name=record.LOSSLESS_CAPS_CASEOPS_V1)
    return [i for i, _ in pieces], counts


def caddie_counts(sp: spm.SentencePieceProcessor, transformed: str) -> tuple[list[int], list[int]]:
    mapped = sp.encode(transformed, out_type="offset_mapping")
    return list(mapped["ids"]), caseops.original_byte_counts(caseops.surfaces(transformed, mapped["offsets"]))


# --- the transform -------------------------------------------------------------------------------


def test_rules_on_hand_made_words():
    assert caseops.encode("The NASA Launch") == f"{TITLE}the {ALLCAPS}nasa {TITLE}launch"
    assert caseops.encode("McDonald iPhone A x") == f"{TITLE}mc{CAPNEXT}donald i{CAPNEXT}phone {TITLE}a x"
    assert caseops.encode(f"a{ESC}b{TITLE}") == f"a{ESC}{ESC}b{ESC}{TITLE}"
    assert caseops.encode("ÉCOLE 3D") == f"É{ALLCAPS}cole 3{TITLE}d"  # words are ASCII letter runs: É stays, COLE is one


@pytest.mark.slow
def test_transform_equals_the_records_on_real_texts(record, real_texts):
    assert len(real_texts) > 1000
    for text in real_texts:
        encoded = caseops.encode(text)
        assert encoded == record.encode_lossless_caps_v2(text)
        assert caseops.decode(encoded) == text


_EDGE = st.sampled_from(["A", "a", "Z", "z", "AB", "Ab", "aB", "@", "[", "`", "{", " ", "\n", "é", "É", "ß", "ﬁ", "İ", "\u2581",
                         "\u0301", "\U0001F600", "\x00", *MARKERS, "\ue000", "\ue005"])
_TEXT = st.lists(st.one_of(_EDGE, st.characters(codec="utf-8"), st.text(alphabet="aAbBzZ", min_size=1, max_size=6)),
                 max_size=40).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXT)
def test_transform_equals_the_records_on_drawn_unicode(record, text):
    encoded = caseops.encode(text)
    assert encoded == record.encode_lossless_caps_v2(text)
    assert caseops.decode(encoded) == text == record.decode_lossless_caps_v2(encoded)


@pytest.mark.parametrize("bad", [TITLE, f"a{ESC}", f"{TITLE}1", f"{CAPNEXT}a", f"a{TITLE}b", f"{ALLCAPS}a{CAPNEXT}b", "A", f"{ALLCAPS}a",
                                 f"{TITLE}a{CAPNEXT}"])
def test_decode_refuses_what_the_transform_never_writes(bad):
    with pytest.raises(CaseOpsError):
        caseops.decode(bad)


# --- per-token original byte counts ----------------------------------------------------------------


def test_byte_counts_by_hand():
    assert caseops.original_byte_counts([TITLE, "the", " é", ESC, TITLE + "x", "\U0001F600"]) == [0, 3, 3, 0, 4, 4]
    with pytest.raises(CaseOpsError):
        caseops.original_byte_counts(["a", ESC])


@pytest.mark.slow
def test_byte_counts_equal_the_records_on_every_token_of_real_texts(record, sp, real_texts):
    tokens = 0
    for text in real_texts:
        transformed = caseops.encode(text)
        ids, counts = caddie_counts(sp, transformed)
        assert (ids, counts) == record_counts(record, sp, transformed)
        tokens += len(ids)
    assert tokens > 500_000


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXT)
def test_byte_counts_equal_the_records_on_drawn_unicode(record, sp, text):
    transformed = caseops.encode(text)
    assert caddie_counts(sp, transformed) == record_counts(record, sp, transformed)


def test_byte_counts_sum_to_the_original_bytes_the_tokenizer_keeps(sp):
    # The normalizer drops whitespace at the ends and folds runs of it; what it keeps counts its original bytes.
    text = "The NASA Launch of ﬁve McDonald's iPhones \U0001F600 costs 3€."
    _, counts = caddie_counts(sp, caseops.encode(text))
    assert sum(counts) == len(text.encode("utf-8"))
