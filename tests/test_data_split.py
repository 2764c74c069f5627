import pytest

import hnet.data.run_tokenizer as run_tokenizer
from hnet.config import DataConfig
from hnet.data import Document, prepare_data, split_documents


def corpus(n=20):
    return [Document(f"doc {i} ".encode() * (10 + 7 * i), {"i": i}) for i in range(n)]


def ids(docs):
    return [d.meta["i"] for d in docs]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_documents_split_is_deterministic_and_disjoint(seed):
    cfg = DataConfig(split_seed=seed, val_fraction=0.2)
    train, val = split_documents(corpus(), cfg)
    assert (ids(train), ids(val)) == tuple(map(ids, split_documents(corpus(), cfg)))
    assert sorted(ids(train) + ids(val)) == list(range(20))
    assert not set(ids(train)) & set(ids(val))
    assert ids(val) == sorted(ids(val))  # validation keeps the source order
    total = sum(len(d.text) for d in corpus())
    assert sum(len(d.text) for d in val) >= 0.2 * total
    assert sum(len(d.text) for d in val[:-1]) < 0.2 * total  # stops as soon as the target is reached


def test_seed_changes_the_split():
    splits = {tuple(ids(split_documents(corpus(), DataConfig(split_seed=s))[1])) for s in range(5)}
    assert len(splits) > 1


def test_val_bytes_and_minimum_one_document_each_side():
    docs = corpus()
    _, val = split_documents(docs, DataConfig(val_bytes=1))
    assert len(val) == 1
    train, val = split_documents(docs, DataConfig(val_bytes=10**9))
    assert len(train) == 1 and len(val) == 19
    train, val = split_documents(corpus(2), DataConfig(val_fraction=0.01))
    assert len(train) == len(val) == 1


def test_tail_split_holds_out_the_end_of_every_document():
    docs = [Document(bytes(range(100)) * k, {"i": k}) for k in (1, 3, 10)]
    train, val = split_documents(docs, DataConfig(split="tail", val_fraction=0.1))
    assert [len(d.text) for d in val] == [10, 30, 100]
    for doc, head, tail in zip(docs, train, val):
        assert head.text + tail.text == doc.text
        assert tail.meta["offset"] == len(head.text)


def test_tail_split_keeps_too_short_documents_whole():
    docs = [Document(b"abc", {"i": 0}), Document(b"x" * 100, {"i": 1})]
    train, val = split_documents(docs, DataConfig(split="tail", val_fraction=0.1))
    assert [d.text for d in train] == [b"abc", b"x" * 90] and [d.text for d in val] == [b"x" * 10]


def test_single_document_falls_back_to_tail_with_warning():
    with pytest.warns(UserWarning, match="split='tail'"):
        train, val = split_documents([Document(b"a" * 1000)], DataConfig(val_fraction=0.05))
    assert len(train[0].text) == 950 and len(val[0].text) == 50


def test_bpe_training_sees_no_validation_bytes(tmp_path, monkeypatch):
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(12):
        (root / f"{i:02d}.txt").write_bytes(f"MARKER{i:02d}XYZ ".encode() + b"the quick brown fox jumps. " * 40)
    seen = []

    def spy(train_docs, vocab_size, out_dir):
        seen.extend(train_docs)
        return train_bpe(train_docs, vocab_size, out_dir)

    train_bpe = run_tokenizer.train_bpe
    monkeypatch.setattr(run_tokenizer, "train_bpe", spy)
    cfg = DataConfig(path=str(root), tokenizer="bpe", vocab_size=320, val_fraction=0.2,
                     tokenizer_path=str(tmp_path / "tok"), cache_dir=str(tmp_path / "cache"))
    data = prepare_data(cfg)
    val_text = b"".join(data.tokenizer.decode(data.val.doc(i)) for i in range(data.val.num_docs))
    val_markers = {m for m in (f"MARKER{i:02d}XYZ".encode() for i in range(12)) if m in val_text}
    assert val_markers and len(seen) == 12 - len(val_markers)
    assert not any(m in d.text for d in seen for m in val_markers)
