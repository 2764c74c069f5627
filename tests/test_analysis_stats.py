"""Boundary statistics and plots, on boundaries whose values are worked out by hand."""

from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.image import imread

from handmade_routing import handmade_model
from hnet.analysis import Boundaries, StageBoundaries, boundary_stats, compare_boundaries, extract_boundaries
from hnet.analysis.plots import plot_boundary_prob, plot_chunk_lengths, plot_rate_by_class
from hnet.analysis.stats import dna_stats, protein_stats, sequence_kind, token_starts, word_starts

TEXT = b"Hi  yo.\nOk 42"  # offsets: H0 i1 _2 _3 y4 o5 .6 \n7 O8 k9 _10 4 11 2 12


def boundaries(text: bytes, *stage_starts) -> Boundaries:
    """Boundaries with the given starts; p = 0.9 at them, 0.1 elsewhere (stage s+1 routes stage s's starts)."""
    stages, offsets = [], np.arange(len(text))
    for s, starts in enumerate(stage_starts, 1):
        mask = np.isin(offsets, starts)
        stages.append(StageBoundaries(s, offsets, np.where(mask, 0.9, 0.1).astype(np.float32), mask))
        offsets = offsets[mask]
    return Boundaries(text, stages)


@pytest.fixture(scope="module")
def stats():
    return boundary_stats(extract_boundaries(handmade_model(), TEXT))


def test_chunk_lengths_and_rates_by_hand(stats):
    s1, s2 = stats["stages"]
    assert stats["bytes"] == 13 and stats["kind"] == "text"
    # stage 1 begins chunks after whitespace and BOS: 0 3 4 8 11 -> lengths 3 1 4 3 2
    assert s1["boundaries"] == 5 and s1["boundary_rate"] == pytest.approx(5 / 13)
    lengths = s1["bytes_per_chunk"]
    assert (lengths["chunks"], lengths["mean"], lengths["median"]) == (5, 2.6, 3.0)
    assert lengths["histogram"]["counts"][:5] == [1, 1, 2, 1, 0] and lengths["histogram"]["longer"] == 0
    by_class = {c: (v["bytes"], v["boundaries"]) for c, v in s1["rate_by_class"].items()}
    assert by_class == {"newline": (1, 0), "whitespace": (3, 1), "punctuation": (1, 0), "letter": (6, 3),
                        "digit": (2, 1), "non_ascii": (0, 0), "control": (0, 0)}
    assert s1["rate_by_class"]["letter"]["rate"] == 0.5 and s1["rate_by_class"]["non_ascii"]["rate"] is None
    # stage 2 keeps the chunks that begin upper case: 0 8 -> lengths 8 5
    assert s2["boundaries"] == 2
    assert (s2["bytes_per_chunk"]["mean"], s2["bytes_per_chunk"]["median"]) == (6.5, 6.5)
    assert s2["rate_by_class"]["letter"]["rate"] == pytest.approx(2 / 6)


def test_word_start_agreement_by_hand(stats):
    assert word_starts(TEXT).tolist() == [0, 4, 8, 11]
    s1, s2 = stats["stages"]
    # stage 1 {0 3 4 8 11}: 4 of 5 are word starts, all 4 word starts found
    assert s1["word_starts"]["precision"] == 0.8 and s1["word_starts"]["recall"] == 1.0
    assert s1["word_starts"]["f1"] == pytest.approx(2 * 0.8 / 1.8)
    # stage 2 {0 8}: both are word starts, half the word starts found
    assert (s2["word_starts"]["precision"], s2["word_starts"]["recall"]) == (1.0, 0.5)
    assert s2["word_starts"]["f1"] == pytest.approx(2 / 3)


def test_token_start_agreement_by_hand():
    # ids are token lengths; id 0 is a piece of no raw byte (a UTF-8 continuation byte piece)
    tokenizer = SimpleNamespace(token_bytes=lambda: np.arange(5), encode=lambda _: [2, 0, 2, 2, 2, 2, 2, 1])
    assert token_starts(TEXT, tokenizer).tolist() == [0, 2, 4, 6, 8, 10, 12]
    s1 = boundary_stats(boundaries(TEXT, [0, 3, 4, 8, 11]), tokenizer=tokenizer)["stages"][0]
    # matched {0 4 8}: precision 3/5, recall 3/7, F1 = 2*3 / (5+7)
    assert s1["token_starts"]["precision"] == pytest.approx(0.6)
    assert s1["token_starts"]["recall"] == pytest.approx(3 / 7)
    assert s1["token_starts"]["f1"] == pytest.approx(0.5)


def test_token_starts_of_a_sentencepiece_model(tmp_path):
    from hnet.data.tokenizers import train_bpe

    corpus = b"the cat sat on the mat; the dog sat on the log. " * 40
    tokenizer = train_bpe([SimpleNamespace(text=corpus)], vocab_size=300, out_dir=tmp_path)
    text = b"the cat sat on the log"
    ids = tokenizer.encode(text)
    lengths = [len(tokenizer.decode([i])) for i in ids]  # ASCII: every piece decodes to its own bytes
    assert token_starts(text, tokenizer).tolist() == (np.cumsum(lengths) - lengths).tolist()
    assert len(ids) < len(text)  # real merges happened


def test_dna_phase_and_motifs_by_hand():
    text = b">chr1 test\nATGAAATA\nGCATG\n"
    assert sequence_kind(text) == "dna"
    # nucleotides 0..12 sit at offsets 11..18 and 20..24; chunks begin at nucleotides 0 3 6 10
    is_start = np.zeros(len(text), dtype=bool)
    is_start[[11, 14, 17, 22]] = True
    dna = dna_stats(text, is_start)
    assert dna["nucleotides"] == 13 and dna["rate"] == pytest.approx(4 / 13)
    phase = {k: (v["bytes"], v["boundaries"]) for k, v in dna["rate_by_phase"].items()}
    assert phase == {"0": (5, 3), "1": (4, 1), "2": (4, 0)}
    motifs = {k: (v["count"], v["boundaries"]) for k, v in dna["motifs"].items()}
    # ATG at nucleotides 0 and 10, TGA at 1, TAG at 6 (across the line break), no TAA
    assert motifs == {"ATG": (2, 2), "TAA": (0, 0), "TAG": (1, 1), "TGA": (1, 0)}
    assert dna["motifs"]["TAA"]["rate"] is None


def test_protein_rate_by_residue_by_hand():
    text = b">sp|P1 test\nMKVL\nMA\n"
    assert sequence_kind(text) == "protein" and sequence_kind(TEXT) == "text"
    is_start = np.zeros(len(text), dtype=bool)
    is_start[[12, 17]] = True  # both M
    protein = protein_stats(text, is_start)
    assert protein["residues"] == 6
    assert {k: (v["bytes"], v["boundaries"]) for k, v in protein["rate_by_residue"].items()} == {
        "A": (1, 0), "K": (1, 0), "L": (1, 0), "M": (2, 2), "V": (1, 0)}
    assert "protein" in boundary_stats(boundaries(text, [12, 17]))["stages"][0]


def test_compare_two_models_by_hand():
    a = boundaries(TEXT, [0, 3, 4, 8, 11], [0, 8])
    b = boundaries(TEXT, [0, 4, 8, 11], [0, 4])
    s1, s2 = compare_boundaries(a, b)
    assert (s1["precision"], s1["recall"]) == (0.8, 1.0) and s1["f1"] == pytest.approx(8 / 9)
    assert (s2["precision"], s2["recall"], s2["f1"]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="different texts"):
        compare_boundaries(a, boundaries(b"other", [0]))


def test_plots_are_written_and_not_blank(tmp_path):
    b = extract_boundaries(handmade_model(), TEXT * 5)
    for plot, name in ((plot_chunk_lengths, "lengths"), (plot_boundary_prob, "prob"), (plot_rate_by_class, "rate")):
        image = imread(plot(b, tmp_path / f"{name}.png"))
        assert image.shape[0] > 100 and image[..., :3].std() > 0.05, name
    with pytest.raises(ValueError, match="span"):
        plot_boundary_prob(b, tmp_path / "empty.png", start=10_000)


def test_orf_scan_and_codon_position_rates_by_hand():
    from hnet.analysis.stats import open_reading_frames

    orf = b"ATG" + b"GCA" * 3 + b"TAA"  # 5 codons, in frame 1 after one leading base
    sequence = b"C" + orf + b"ATGCC"  # the trailing ATG has no stop: not an ORF
    in_orf, position = open_reading_frames(sequence, min_codons=5)
    assert in_orf.tolist() == [False] + [True] * 15 + [False] * 5
    assert position[1:16].tolist() == [0, 1, 2] * 5
    assert not open_reading_frames(sequence, min_codons=6)[0].any()  # too short

    # boundaries at every first codon position of the ORF, plus one outside it
    is_start = np.zeros(len(sequence), dtype=bool)
    is_start[[1, 4, 7, 10, 13, 18]] = True
    text = b">seq\n" + sequence
    offsets = np.arange(len(sequence)) + 5  # the header line takes 5 bytes
    is_text_start = np.zeros(len(text), dtype=bool)
    is_text_start[offsets[is_start]] = True
    dna = dna_stats(text, is_text_start, motifs=(), orf_min_codons=5)
    assert dna["orf_nucleotides"] == 15
    by_position = {k: (v["bytes"], v["boundaries"]) for k, v in dna["rate_by_codon_position_in_orfs"].items()}
    assert by_position == {"1": (5, 5), "2": (5, 0), "3": (5, 0)}


def test_protein_rate_by_offset_from_record_start():
    text = b">a\nMKV\n>b\nMKVLA\n"
    is_start = np.zeros(len(text), dtype=bool)
    is_start[[3, 10, 12]] = True  # record a: offset 0; record b: offsets 0 and 2
    protein = protein_stats(text, is_start)
    by_offset = {k: (v["bytes"], v["boundaries"]) for k, v in protein["rate_by_offset_from_record_start"].items()}
    assert by_offset["0"] == (2, 2) and by_offset["1"] == (2, 0) and by_offset["2"] == (2, 1)
    assert by_offset["3"] == (1, 0) and by_offset["4"] == (1, 0) and by_offset[">=10"] == (0, 0)
