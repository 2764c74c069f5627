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


def test_a_corpus_split_by_its_maker_validates_on_val_path(tmp_path):
    """data.val_path: all of `path` trains, `val_path` validates (a code corpus split by package); the
    shard cache tells it from the same files given as one corpus."""
    from hnet.data import read_split

    for name in ("a", "b", "c"):
        (tmp_path / "train").mkdir(exist_ok=True)
        (tmp_path / "train" / f"{name}.py").write_bytes(f"def {name}():\n    return 1\n".encode() * 20)
    (tmp_path / "val.py").write_bytes(b"import os\n" * 30)
    cfg = DataConfig(path=str(tmp_path / "train"), val_path=str(tmp_path / "val.py"), cache_dir=str(tmp_path / "cache"),
                     seq_len=16)
    train, val = read_split(cfg)
    assert [d.text[:5] for d in train] == [b"def a", b"def b", b"def c"] and [d.text for d in val] == [b"import os\n" * 30]
    cut = read_split(DataConfig(path=cfg.path, val_path=cfg.val_path, max_bytes=100))  # each side cut alone
    assert sum(len(d.text) for d in cut[0]) == 100 and len(cut[1][0].text) == 100
    data = prepare_data(cfg)
    assert data.val.num_bytes == 300 and data.train.num_docs == 3
    together = prepare_data(DataConfig(path=[cfg.path, cfg.val_path], cache_dir=cfg.cache_dir, seq_len=16))
    assert together.train.num_bytes + together.val.num_bytes == data.train.num_bytes + 300
    assert len(list((tmp_path / "cache").glob("text-*"))) == 2  # two entries, not one taken for the other
    (tmp_path / "empty.py").write_bytes(b"")
    with pytest.raises(ValueError, match="data.val_path: .*empty.py.* yields no documents"):
        read_split(DataConfig(path=cfg.path, val_path=str(tmp_path / "empty.py")))
    with pytest.raises(ValueError, match="data.val_path: 'nowhere' does not exist"):
        read_split(DataConfig(path=cfg.path, val_path="nowhere"))
