import json
from pathlib import Path

import numpy as np
import pytest

import hnet.data.tokenizers as tokenizers
from hnet.cli import main
from hnet.config import DataConfig
from hnet.data import BPETokenizer, ByteTokenizer, Document, tokenizer_for_run, train_bpe

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")

INVALID_UTF8 = b"ok \xff\xfe\x80 \xc3( \xed\xa0\x80 \xf4\x90\x80\x80 end\x00\n"
ALL_BYTES = bytes(range(256)) + bytes(range(255, -1, -1))


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    if not DATA.is_dir():
        pytest.skip("../shared/data is absent")
    text = (DATA / "text/tinyshakespeare.txt").read_bytes()[:200_000]
    return train_bpe([Document(text)], 400, tmp_path_factory.mktemp("tok"))


def samples():
    """Byte strings of every kind the tokenizer must round-trip."""
    out = {"invalid_utf8": INVALID_UTF8, "all_bytes": ALL_BYTES, "empty": b"", "spaces": b"a  b   c    \n\t d "}
    if DATA.is_dir():
        out["dna"] = (DATA / "dna/athaliana_tair10_1pct_multi.fa").read_bytes()[:20_000]
        out["protein"] = (DATA / "protein/yeast_s288c_UP000002311.fasta").read_bytes()[:20_000]
        out["chinese"] = (DATA / "text/sanguo_yanyi_zh_pg23950.txt").read_bytes()[:20_000]
        out["python"] = (DATA / "text/cpython-3.11.7-stdlib-sample.txt").read_bytes()[:20_000]
    return out


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.dtype) == (256, 254, np.uint8)
    ids = tok.encode(ALL_BYTES)
    assert ids.tolist() == list(ALL_BYTES)
    assert tok.decode(ids) == ALL_BYTES and tok.decode(ids.tolist()) == ALL_BYTES
    assert tok.token_bytes()[ids].sum() == len(ALL_BYTES)


@needs_data
@pytest.mark.parametrize("name", list(samples()))
def test_bpe_round_trip_is_exact(bpe, name):
    data = samples()[name]
    ids = bpe.encode(data)
    assert ids.dtype == np.uint16
    assert bpe.decode(ids) == data
    assert bpe.token_bytes()[ids].sum() == len(data)  # bytes per token, exactly, for bits per byte
    assert bpe.bos_id not in ids.tolist()


@needs_data
def test_bpe_decodes_any_ids(bpe):
    """A sampling model may emit byte pieces that encode never pairs up (0xE3 0x96 ...): decode still gives bytes."""
    byte_ids = [i for i in range(bpe.vocab_size) if bpe.sp.is_byte(i)]
    odd = [byte_ids[0xE3], byte_ids[0x96], bpe.encode(b"to be")[0], byte_ids[0xF0], byte_ids[0x9F]]
    assert isinstance(bpe.decode(odd), bytes) and bpe.decode(odd).endswith(b"\xef\xbf\xbd")  # U+FFFD, in UTF-8
    assert bpe.decode(bpe.encode(INVALID_UTF8)) == INVALID_UTF8


def test_bpe_model_properties(bpe):
    assert bpe.vocab_size == 400 and bpe.bos_id == 1
    assert bpe.path.name == "tokenizer.model"
    held_out = (DATA / "text/tinyshakespeare.txt").read_bytes()[-50_000:]
    assert len(held_out) / len(bpe.encode(held_out)) > 1.5  # it compresses text it was not trained on
    assert bpe.decode([bpe.bos_id, *bpe.encode(b"hi")]) == b"hi"  # BOS decodes to nothing
    assert BPETokenizer(bpe.path).fingerprint == bpe.fingerprint


@needs_data
def test_bpe_encodes_long_documents_in_pieces(bpe, monkeypatch):
    text = (DATA / "text/tinyshakespeare.txt").read_bytes()[200_000:260_000]
    dna = (DATA / "dna/ecoli_k12_mg1655_NC_000913.3.fa").read_bytes()[100:30_000].replace(b"\n", b"")
    whole_text = bpe.encode(text)
    monkeypatch.setattr(tokenizers, "ENCODE_CHARS", 997)
    assert np.array_equal(bpe.encode(text), whole_text)  # cutting at a space changes no token
    assert bpe.decode(bpe.encode(dna)) == dna


def test_training_pieces_bound_sentence_length():
    docs = [Document(b"A" * 10_000), Document(b"line\n" * 2000), Document(INVALID_UTF8)]
    pieces = list(tokenizers._training_pieces(docs))
    assert max(map(len, pieces)) <= tokenizers.TRAIN_PIECE_CHARS
    assert "".join(pieces).encode("latin-1") == b"".join(d.text for d in docs)
    assert all(p.endswith("\n") for p in pieces[3:5])  # text is cut after a newline


def test_bpe_trains_on_long_lines_and_rejects_tiny_vocab(tmp_path):
    dna = np.random.default_rng(0).choice(list(b"ACGT"), 60_000).astype(np.uint8).tobytes()
    tok = train_bpe([Document(dna)], 300, tmp_path)
    assert tok.decode(tok.encode(dna)) == dna and len(tok.encode(dna)) < len(dna)
    with pytest.raises(ValueError, match="data.vocab_size 100"):
        train_bpe([Document(dna)], 100, tmp_path / "small")


def test_tokenizer_for_run(tmp_path):
    text = tmp_path / "a.txt"
    text.write_bytes(b"to be or not to be, that is the question\n" * 200)
    cfg = DataConfig(path=str(text), tokenizer="bpe", vocab_size=300)
    assert isinstance(tokenizer_for_run(DataConfig(bos_id=7), tmp_path / "run0"), ByteTokenizer)
    with pytest.warns(UserWarning):  # one document: the split falls back to tail
        trained = tokenizer_for_run(cfg, tmp_path / "run1")
    assert trained.path == tmp_path / "run1" / "tokenizer" / "tokenizer.model"
    barrier = []
    again = tokenizer_for_run(cfg, tmp_path / "run1", is_main=False, wait=lambda: barrier.append(1))
    assert barrier == [1] and again.fingerprint == trained.fingerprint  # loaded, not retrained
    cfg.tokenizer_path = str(tmp_path / "run1" / "tokenizer")  # a given model is copied into the run
    assert tokenizer_for_run(cfg, tmp_path / "run2").fingerprint == trained.fingerprint


def test_tokenizer_cli(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    for i in range(5):
        (tmp_path / "docs" / f"{i}.txt").write_bytes(b"a rose is a rose is a rose. " * (50 + i))
    config = {"model": {"arch_layout": ["m1"], "d_model": [64], "d_intermediate": [0]}, "model_type": "isotropic",
              "data": {"path": str(tmp_path / "docs"), "val_fraction": 0.2}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    assert main(["tokenizer", "train", "--data", str(tmp_path / "run.json"), "--vocab-size", "272",
                 "--out", str(tmp_path / "tok")]) == 0
    assert (tmp_path / "tok" / "tokenizer.model").is_file()
    assert "272 pieces from 4 training documents" in capsys.readouterr().out
