import os
from pathlib import Path

import numpy as np
import pytest

import hnet.data.shards as shards
from hnet.config import DataConfig
from hnet.data import TrainLoader, prepare_data, read_split

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):  # random bytes: BOS-valued bytes and invalid UTF-8 included
        (root / f"{i}.bin").write_bytes(rng.integers(0, 256, 200 + 50 * i, dtype=np.uint8).tobytes())
    return root


def config(corpus, tmp_path, **fields):
    return DataConfig(path=str(corpus), cache_dir=str(tmp_path / "cache"), val_fraction=0.2, **fields)


def entries(tmp_path):
    """Every folder in the cache, the datasets cache aside: complete entries and leftovers alike."""
    return sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name != "datasets")


def test_shards_hold_the_split_exactly(corpus, tmp_path):
    cfg = config(corpus, tmp_path)
    data = prepare_data(cfg)
    train, val = read_split(cfg)
    for split, docs in ((data.train, train), (data.val, val)):
        assert isinstance(split.tokens, np.memmap) and split.tokens.dtype == np.uint8
        assert split.num_docs == len(docs)
        assert [bytes(split.doc(i)) for i in range(split.num_docs)] == [d.text for d in docs]
        assert split.doc_bytes.tolist() == [len(d.text) for d in docs]
        assert split.bos_id == 254
    assert data.train.num_bytes + data.val.num_bytes == sum(200 + 50 * i for i in range(10))


def test_second_call_is_a_cache_hit(corpus, tmp_path, monkeypatch):
    cfg = config(corpus, tmp_path)
    first = prepare_data(cfg)

    def fail(*args):
        raise AssertionError("re-encoded despite a cached entry")

    monkeypatch.setattr(shards, "_write_split", fail)
    monkeypatch.setattr(shards, "read_split", fail)
    second = prepare_data(config(corpus, tmp_path, seq_len=64, packing="separator"))  # not content
    assert second.path == first.path
    assert np.array_equal(second.train.tokens, first.train.tokens)


def test_content_settings_change_the_cache_folder(corpus, tmp_path):
    paths = {prepare_data(config(corpus, tmp_path)).path}
    for fields in ({"split_seed": 1}, {"max_bytes": 1000}, {"val_fraction": 0.3}, {"split": "tail"}):
        cfg = config(corpus, tmp_path)
        for name, value in fields.items():
            setattr(cfg, name, value)
        paths.add(prepare_data(cfg).path)
    assert len(paths) == 5
    os.utime(corpus / "3.bin", ns=(0, 0))  # an edited source file is a different corpus
    assert prepare_data(config(corpus, tmp_path)).path not in paths
    assert prepare_data(config(corpus, tmp_path, bos_id=0)).train.bos_id == 0  # BOS is not in the shards


def test_interrupted_write_leaves_no_trusted_entry(corpus, tmp_path, monkeypatch):
    cfg = config(corpus, tmp_path)
    write_split = shards._write_split

    def crash_on_val(prefix, docs, tokenizer):
        if prefix.name == "val":
            raise KeyboardInterrupt("killed mid-write")
        return write_split(prefix, docs, tokenizer)

    monkeypatch.setattr(shards, "_write_split", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg)
    assert entries(tmp_path) == []  # the partial folder is removed

    # A hard kill leaves its temporary folder behind; it must never be taken for the entry.
    monkeypatch.setattr(shards.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg)
    (leftover,) = entries(tmp_path)
    assert leftover.startswith(".")
    monkeypatch.undo()
    data = prepare_data(cfg)
    assert data.path.name in entries(tmp_path) and data.val.num_docs == 2
    assert [bytes(data.val.doc(i)) for i in range(2)] == [d.text for d in read_split(cfg)[1]]


def test_bpe_shards_and_loader(tmp_path):
    if not DATA.is_dir():
        pytest.skip("../shared/data is absent")
    cfg = DataConfig(path=str(DATA / "text/tinyshakespeare.txt"), max_bytes=100_000, tokenizer="bpe",
                     vocab_size=400, tokenizer_path=str(tmp_path / "tok"), cache_dir=str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="split='tail'"):
        data = prepare_data(cfg)
    assert (tmp_path / "tok" / "tokenizer.model").is_file()
    assert data.train.tokens.dtype == np.uint16 and data.train.bos_id == data.tokenizer.bos_id == 1
    assert data.val.num_bytes == 5000 and 1.5 < data.val.bytes_per_token < 4
    assert data.tokenizer.token_bytes()[data.val.tokens].sum() == data.val.num_bytes
    batch = next(TrainLoader(data.train, seq_len=32, batch_size=2, seed=0))
    assert batch["input_ids"][0, 0] == data.tokenizer.bos_id
    text = data.tokenizer.decode(batch["input_ids"][0].tolist())  # BOS decodes to nothing
    assert len(text) > 32 and Path(cfg.path).read_bytes().startswith(text)
    again = prepare_data(cfg)  # the tokenizer now exists: loaded, not retrained, and the shards are cached
    assert again.path == data.path


def test_a_killed_writers_temporary_folder_is_removed_by_the_next_run(corpus, tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    cache = tmp_path / "cache"
    cache.mkdir()
    leftover = cache / f".text-0123456789abcdef.{host}.{dead.pid}.k1ll3d"
    live = cache / f".text-0123456789abcdef.{host}.{os.getpid()}.wr1t1n"  # a writer at work now
    other_host = cache / f".text-0123456789abcdef.elsewhere.{dead.pid}.r3m0te"  # cannot tell: left alone
    for folder in (leftover, live, other_host):
        folder.mkdir()
        (folder / "train.bin").write_bytes(b"\0" * 100)
    prepare_data(config(corpus, tmp_path))
    assert not leftover.exists() and live.exists() and other_host.exists()
    assert len([e for e in entries(tmp_path) if not e.startswith(".")]) == 1
    leftover.mkdir()
    prepare_data(config(corpus, tmp_path))  # a cache hit cleans up too
    assert not leftover.exists()
