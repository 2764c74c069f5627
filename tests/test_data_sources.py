import gzip
import json
from pathlib import Path

import pytest

from hnet.config import DataConfig
from hnet.data import iter_documents, resolve_path, source_files
from hnet.data.sources import SAMPLES_DIR

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")


def read(tmp_path, **fields):
    return list(iter_documents(DataConfig(cache_dir=str(tmp_path / "cache"), **fields)))


def write_fasta(tmp_path, text, name="x.fa"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# --- FASTA on the real corpora -------------------------------------------------------------------


@needs_data
def test_fasta_dna_multi_record_real(tmp_path):
    docs = read(tmp_path, kind="dna", source="fasta", path=str(DATA / "dna/athaliana_tair10_1pct_multi.fa"))
    lengths = {"Chr1": 304276, "Chr2": 196982, "Chr3": 234598, "Chr4": 185850, "Chr5": 269755, "ChrM": 3669, "ChrC": 1544}
    assert [d.meta["header"].split()[0] for d in docs] == list(lengths)
    assert docs[0].meta["header"] == "Chr1 1..304277"
    assert [len(d.text) for d in docs] == list(lengths.values())
    # IUPAC codes are accepted by the dna alphabet: TAIR10 Chr2 has K x3, Y x1, S x1.
    chr2 = docs[1].text
    assert (chr2.count(b"K"), chr2.count(b"Y"), chr2.count(b"S")) == (3, 1, 1)
    assert set(b"".join(d.text for d in docs)) <= set(b"ACGTNKYS")
    assert sum(d.text.count(b"N") for d in docs) == 2220


@needs_data
def test_fasta_dna_n_runs_real(tmp_path):
    path = str(DATA / "dna/athaliana_tair10_1pct_multi.fa")
    collapsed = read(tmp_path, kind="dna", source="fasta", path=path, dna_n_runs="collapse")
    assert [d.text.count(b"N") for d in collapsed[1:4]] == [2, 1, 1]  # runs: 120 + 1000, 100, 1000
    dropped = read(tmp_path, kind="dna", source="fasta", path=path, dna_n_runs="drop")
    assert sum(len(d.text) for d in dropped) == 1196674 - 2220


@needs_data
def test_fasta_strict_alphabet_names_file_and_line_real(tmp_path):
    path = DATA / "dna/athaliana_tair10_1pct_multi.fa"
    number, line = next((n, line) for n, line in enumerate(path.read_bytes().split(b"\n"), 1)
                        if not line.startswith(b">") and line.strip(b"ACGTN"))
    column = next(i for i, c in enumerate(line, 1) if c not in b"ACGTN")
    with pytest.raises(ValueError, match=rf"athaliana_tair10_1pct_multi\.fa: line {number}, column {column}: "
                                         rf"character '{chr(line[column - 1])}' is not in the ACGTN alphabet"):
        read(tmp_path, kind="dna", source="fasta", path=str(path), alphabet="ACGTN")


@needs_data
def test_fasta_genome_real(tmp_path):
    (doc,) = read(tmp_path, kind="dna", source="fasta", path=str(DATA / "dna/ecoli_k12_mg1655_NC_000913.3.fa"))
    assert doc.meta["header"] == "NC_000913.3 Escherichia coli str. K-12 substr. MG1655, complete genome"
    assert len(doc.text) == 4641652
    assert set(doc.text) == set(b"ACGT")


@needs_data
def test_fasta_protein_real(tmp_path):
    docs = read(tmp_path, kind="protein", source="fasta", path=str(DATA / "protein"))
    assert len(docs) == 4363 + 6077  # ecoli then yeast: a folder is read in sorted order
    assert docs[0].meta["header"].startswith("tr|A0A385XJN2|A0A385XJN2_ECOLI Uncharacterized protein")
    assert docs[0].text.startswith(b"MTTTGLRPRLNVRQRKDTGYLPHSSPFSLQFRPAILYSDGYLPLVPEDKNETDKIHTPRIVPQKLERT")
    assert all(d.meta["header"][:3] in ("sp|", "tr|") for d in docs)
    residues = set(b"".join(d.text for d in docs))
    assert residues == set(b"ACDEFGHIKLMNPQRSTVWY") | set(b"UX")  # selenocysteine and unknown in E. coli


@needs_data
def test_fasta_gzip_real(tmp_path):
    raw = (DATA / "dna/athaliana_tair10_1pct_multi.fa").read_bytes()
    path = tmp_path / "athaliana.fa.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    plain = read(tmp_path, kind="dna", source="fasta", path=str(DATA / "dna/athaliana_tair10_1pct_multi.fa"))
    assert [d.text for d in read(tmp_path, kind="dna", source="fasta", path=str(path))] == [d.text for d in plain]


# --- FASTA rules on hand-made files ----------------------------------------------------------------


def test_fasta_line_breaks_lowercase_and_n_runs(tmp_path):
    path = write_fasta(tmp_path, b">r1 first\r\nACgt\r\nNNnnA\r\n\r\n>r2\nTTTT\n")
    upper = read(tmp_path, kind="dna", source="fasta", path=str(path))
    assert [(d.meta["header"], d.text) for d in upper] == [("r1 first", b"ACGTNNNNA"), ("r2", b"TTTT")]
    kept = read(tmp_path, kind="dna", source="fasta", path=str(path), dna_lowercase="keep", dna_n_runs="collapse")
    assert kept[0].text == b"ACgtNA"
    dropped = read(tmp_path, kind="dna", source="fasta", path=str(path), dna_n_runs="drop")
    assert dropped[0].text == b"ACGTA"
    assert upper[1].meta["line"] == 5


def test_fasta_gzip_direct(tmp_path):
    path = tmp_path / "p.faa.gz"
    path.write_bytes(gzip.compress(b">p1\nMKV*\n>p2\nACDX\n"))
    assert [d.text for d in read(tmp_path, kind="protein", source="fasta", path=str(path))] == [b"MKV*", b"ACDX"]


@pytest.mark.parametrize("kind, text, line, char", [
    ("dna", ">a\nACGT\nACQT\n", 3, "'Q'"),
    ("dna", ">a\nACGT\n>b\nAC-T\n", 4, "'-'"),
    ("protein", ">a\nMKV\nmkv\n", 3, "'m'"),  # protein is upper case only
    ("dna", ">a\nACG\u00e9\n", 2, r"b'\\xc3'"),
])
def test_fasta_bad_letter_names_file_line_and_char(tmp_path, kind, text, line, char):
    path = write_fasta(tmp_path, text, "bad.fa")
    with pytest.raises(ValueError, match=rf"bad\.fa: line {line}, column \d+: character {char}"):
        read(tmp_path, kind=kind, source="fasta", path=str(path))


@pytest.mark.parametrize("text, message", [
    ("ACGT\n>a\nACGT\n", r"line 1: sequence before the first '>' header"),
    ("", r"line 1: no FASTA record"),
    ("\n\n", r"line 2: no FASTA record"),
    (">a\nACGT\n>b\n>c\nAC\n", r"line 3: FASTA record 'b' has no sequence"),
    (">a\nACGT\n>b\n\n", r"line 3: FASTA record 'b' has no sequence"),
])
def test_fasta_malformed(tmp_path, text, message):
    path = write_fasta(tmp_path, text, "broken.fa")
    with pytest.raises(ValueError, match=r"broken\.fa: " + message):
        read(tmp_path, kind="dna", source="fasta", path=str(path))


def test_fasta_custom_alphabet_and_unchecked_text(tmp_path):
    path = write_fasta(tmp_path, ">a\nABBA\n")
    assert read(tmp_path, kind="text", source="fasta", path=str(path), alphabet="AB")[0].text == b"ABBA"
    assert read(tmp_path, kind="text", source="fasta", path=str(path))[0].text == b"ABBA"
    with pytest.raises(ValueError, match="line 2"):
        read(tmp_path, kind="text", source="fasta", path=str(path), alphabet="A")


# --- text and datasets sources ---------------------------------------------------------------------


def test_text_file_exact_bytes_and_gzip(tmp_path):
    raw = b"caf\xc3\xa9 \xff\xfe invalid \x80 utf-8\r\n\x00\xfe" * 3
    (tmp_path / "a.txt").write_bytes(raw)
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(raw[::-1]))
    assert read(tmp_path, path=str(tmp_path / "a.txt"))[0].text == raw
    assert read(tmp_path, path=str(tmp_path / "b.txt.gz"))[0].text == raw[::-1]


def test_text_folder_sorted_walk(tmp_path):
    root = tmp_path / "corpus"
    for name, text in [("b.txt", b"B"), ("a/z.txt", b"AZ"), ("a/b.txt", b"AB"), (".hidden", b"H"),
                       (".git/config", b"G"), ("empty.txt", b"")]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text)
    docs = read(tmp_path, path=str(root))
    assert [d.text for d in docs] == [b"AB", b"AZ", b"B"]  # hidden files skipped, empty file yields nothing
    assert [Path(d.meta["path"]).name for d in docs] == ["b.txt", "z.txt", "b.txt"]


def test_max_bytes_truncates_stream(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_bytes(bytes([65 + i]) * 10)
    assert [d.text for d in read(tmp_path, path=str(tmp_path), max_bytes=25)] == [b"A" * 10, b"B" * 10, b"C" * 5]
    assert [d.text for d in read(tmp_path, path=str(tmp_path), max_bytes=10)] == [b"A" * 10]


def test_missing_path(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read(tmp_path, path=str(tmp_path / "nope.txt"))


def test_package_paths_resolve_to_bundled_samples():
    assert SAMPLES_DIR == Path(__file__).resolve().parents[1] / "hnet" / "samples"
    assert resolve_path("package:tiny/sample.txt") == SAMPLES_DIR / "tiny" / "sample.txt"
    with pytest.raises(ValueError, match="package:nothing-here.txt"):
        source_files(DataConfig(path="package:nothing-here.txt"))


def test_datasets_jsonl_and_gz(tmp_path):
    rows = [{"id": 1, "body": "Hello, wörld"}, {"id": 2, "body": "三國演義\n"}, {"id": 3, "body": ""}]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    (tmp_path / "a.jsonl").write_bytes(lines)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(lines))
    for name in ("a.jsonl", "b.jsonl.gz"):
        docs = read(tmp_path, source="datasets", path=str(tmp_path / name), text_field="body")
        assert [d.text for d in docs] == ["Hello, wörld".encode(), "三國演義\n".encode()]
        assert [d.meta["row"] for d in docs] == [0, 1]
    assert (tmp_path / "cache" / "datasets").is_dir()  # the arrow cache stays inside our cache


def test_datasets_missing_field(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl: no field 'text'.*fields: content"):
        read(tmp_path, source="datasets", path=str(tmp_path / "a.jsonl"))


@pytest.mark.parametrize("content,message", [
    (gzip.compress(b"some text " * 1000)[:-30], "the gzip file is truncated"),
    (b"plain text, not gzip", "not a gzip file, though its name ends in .gz"),
])
def test_a_broken_gz_names_the_file_and_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as e:
        read(tmp_path, path=str(path))
    assert str(e.value).startswith(f"{path}: ") and path.read_bytes() == content
