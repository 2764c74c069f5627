"""`hnet inspect` and its parts: boundary extraction on a hand-set model, terminal and HTML views (in a
real headless browser too), JSON, the training-loop snapshot, and the errors a user can cause."""

import html
import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from handmade_routing import P1_OTHER, P2_OTHER, expected_boundaries, handmade_model
from hnet.analysis import (Boundaries, StageBoundaries, extract_boundaries, render_html, render_term,
                           unescape_term, write_boundary_snapshot)
from hnet.analysis.render import display_units, shown_chunks
from hnet.cli import main

TEXT = b"Hi  yo.\nOk 42"
# Every kind of byte the views must carry: markers and escapes, multi-byte characters, invalid UTF-8
# (a stray continuation, a cut character, an encoded surrogate, BOS's own value 0xfe), control characters.
NASTY = ("A \\ | [ ] { } <b>&amp; caf\u00e9 \u6771\u4eac \U0001F642 nbsp\u00a0zwj\u200d\n\tTab\r\n".encode()
         + b"bad \xff \xc3 \xed\xa0\x80 \xfe \x00\x1b[31m End")
SAMPLE = (Path(__file__).resolve().parents[1] / "hnet" / "samples" / "tinyshakespeare.txt").read_bytes()


@pytest.fixture(scope="module")
def model():
    return handmade_model()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("models") / "two_stage"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def nasty(model):
    return extract_boundaries(model, NASTY)


def test_extracted_positions_and_probabilities_by_hand(model):
    b = extract_boundaries(model, TEXT)
    s1, s2 = b.stages
    assert s1.offsets.tolist() == list(range(13))
    assert s1.starts.tolist() == [0, 3, 4, 8, 11]  # after BOS, the spaces and the newline
    expected_p1 = np.where(np.isin(np.arange(13), [0, 3, 4, 8, 11]), 1.0, P1_OTHER)
    np.testing.assert_allclose(s1.prob, expected_p1, atol=1e-6)
    # stage 2 routes the stage-1 chunks, placed at their first byte; it keeps those that begin upper case
    assert s2.offsets.tolist() == [0, 3, 4, 8, 11] and s2.starts.tolist() == [0, 8]
    np.testing.assert_allclose(s2.prob, [1.0, P2_OTHER, P2_OTHER, 1.0, P2_OTHER], atol=1e-6)


def test_windows_give_the_same_boundaries_as_one_pass(model):
    # The hand-set routing looks one byte back, so any context >= 1 must reproduce the single pass.
    text = SAMPLE[:300]
    whole = extract_boundaries(model, text)
    windowed = extract_boundaries(model, text, window=80, context=8)
    for a, b in zip(whole.stages, windowed.stages):
        assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.prob, b.prob, atol=1e-6)
    assert [st.starts.tolist() for st in whole.stages] == list(expected_boundaries(text))


def test_terminal_view_by_hand(model):
    b = extract_boundaries(model, TEXT)
    assert render_term(b) == "[Hi | |yo.\\n\n][Ok |42]"
    assert render_term(b, [1]) == "Hi | |yo.\\n\n|Ok |42"
    assert render_term(b, [2]) == "Hi  yo.\\n\n|Ok 42"
    colored = render_term(b, color=True)
    assert "\x1b[" in colored and "|" not in colored and unescape_term(colored) == TEXT


def test_boundary_inside_a_character_is_shown_at_its_start():
    text = "a\u00e9b".encode()  # é is bytes 1-2
    offsets = np.arange(len(text))
    mask = np.isin(offsets, [0, 2, 3])
    b = Boundaries(text, [StageBoundaries(1, offsets, mask.astype(np.float32), mask)])
    assert render_term(b) == "a|\u00e9|b"
    shown = shown_chunks(b, [1], display_units(text)[1])[0]
    assert shown.units.tolist() == [0, 1, 2] and shown.offsets.tolist() == [0, 2, 3]


@pytest.mark.parametrize("stages", [None, [1], [2]], ids=["all", "stage1", "stage2"])
@pytest.mark.parametrize("color", [False, True], ids=["plain", "color"])
def test_terminal_view_round_trips_every_byte(nasty, stages, color):
    rendered = render_term(nasty, stages, color=color)
    assert unescape_term(rendered) == NASTY
    assert "\\xff" in rendered and "\u6771" in rendered and "\x00" not in rendered


class PageText(HTMLParser):
    """The text of <pre id="text"> with the \\xNN escapes of <span class="x"> undone, and its span tree."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.inside, self.stack, self.out, self.spans = False, [], bytearray(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "pre" and attrs.get("id") == "text":
            self.inside = True
        elif self.inside and tag == "span":
            self.stack.append(attrs["class"].split()[0])
            if self.stack[-1] != "x":
                self.spans.append((self.stack[-1], tuple(self.stack[:-1]), attrs["title"]))

    def handle_endtag(self, tag):
        if tag == "pre":
            self.inside = False
        elif self.inside and tag == "span":
            self.stack.pop()

    def handle_data(self, data):
        if self.inside and self.stack[-1:] == ["x"]:
            self.out += bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-f]{2})", data))
        elif self.inside:
            self.out += data.encode()


def parse_page(page: str) -> PageText:
    parser = PageText()
    parser.feed(page)
    return parser


@pytest.mark.parametrize("stages", [None, [1], [2]], ids=["all", "stage1", "stage2"])
def test_html_round_trips_every_byte_in_nested_spans(nasty, stages):
    page = parse_page(render_html(nasty, stages))
    assert bytes(page.out) == NASTY
    shown = {sc.stage: len(sc.units) for sc in shown_chunks(nasty, stages or [1, 2], display_units(NASTY)[1])}
    assert {s: sum(cls == f"s{s}" for cls, _, _ in page.spans) for s in shown} == shown
    if stages is None:  # every stage-1 chunk sits inside exactly one stage-2 chunk
        assert all(parents == ("s2",) for cls, parents, _ in page.spans if cls == "s1")


def test_html_titles_give_offset_and_probability(model):
    page = parse_page(render_html(extract_boundaries(model, TEXT)))
    titles = [t for _, _, t in page.spans]
    assert titles[:2] == ["stage 2 · byte 0 · p 1.000", "stage 1 · byte 0 · p 1.000 · stage 2 p 1.000"]
    assert "stage 1 · byte 3 · p 1.000 · stage 2 p 0.100" in titles


def _chromium(*args, tmp_path):
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed (apt-get install -y chromium); CI installs it"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=60, check=True).stdout


COUNT_SCRIPT = """<script>
const text = document.getElementById("text");
const counts = document.createElement("pre");
counts.id = "counts";
counts.textContent = JSON.stringify({s1: text.querySelectorAll("span.s1").length,
  s2: text.querySelectorAll("span.s2").length, s1_in_s2: text.querySelectorAll("span.s2 > span.s1").length,
  chars: text.textContent.length});
document.body.appendChild(counts);
</script></body>"""


def test_html_in_a_headless_browser(model, tmp_path):
    text = SAMPLE[:3000] + NASTY
    b = extract_boundaries(model, text)
    page = render_html(b)
    shown = {sc.stage: len(sc.units) for sc in shown_chunks(b, [1, 2], display_units(text)[1])}
    counted = tmp_path / "counted.html"
    counted.write_text(page.replace("</body>", COUNT_SCRIPT), encoding="utf-8")
    dom = _chromium("--dump-dom", counted.as_uri(), tmp_path=tmp_path)
    counts = json.loads(html.unescape(re.search(r'<pre id="counts">(.*?)</pre>', dom).group(1)))
    assert (counts["s1"], counts["s2"], counts["s1_in_s2"]) == (shown[1], shown[2], shown[1])
    assert counts["chars"] > len(SAMPLE[:3000])

    plain = tmp_path / "page.html"
    plain.write_text(page, encoding="utf-8")
    _chromium(f"--screenshot={tmp_path / 'shot.png'}", "--window-size=1200,800", plain.as_uri(), tmp_path=tmp_path)
    image = imread(tmp_path / "shot.png")
    assert image.shape[:2] == (800, 1200) and image[..., :3].std() > 0.05


def test_100kB_renders_quickly_and_compactly():
    # Random boundaries at a trained model's rates: about 4 bytes per stage-1 chunk, 3 of those per stage-2 chunk.
    text = SAMPLE[:100_000]
    rng = np.random.default_rng(0)
    p1 = rng.beta(1, 3, len(text)).astype(np.float32) + 0.1
    s1 = StageBoundaries(1, np.arange(len(text)), p1, p1 > 0.5)
    p2 = rng.beta(1, 2, int(s1.mask.sum())).astype(np.float32) + 0.1
    b = Boundaries(text, [s1, StageBoundaries(2, s1.starts, p2, p2 > 0.5)])
    start = time.perf_counter()
    page = render_html(b)
    term = render_term(b)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"{elapsed:.1f} s"
    assert len(page.encode()) < 30 * len(text) and unescape_term(term) == text


def test_snapshot_for_the_training_loop(model, tmp_path):
    path = write_boundary_snapshot(model, TEXT, tmp_path / "run" / "boundaries" / "step_000200.html")
    assert path == tmp_path / "run" / "boundaries" / "step_000200.html"
    assert bytes(parse_page(path.read_text(encoding="utf-8")).out) == TEXT


def test_cli_json(model_dir, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["inspect", str(model_dir), "--text", TEXT.decode(), "--format", "json", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"model", "bytes", "stages", "stats"} and data["bytes"] == 13
    s1, s2 = data["stages"]
    assert set(s1) == {"stage", "boundaries", "offsets", "prob"}
    assert (s1["boundaries"], s2["boundaries"], s2["offsets"]) == ([0, 3, 4, 8, 11], [0, 8], [0, 3, 4, 8, 11])
    assert s2["prob"] == pytest.approx([1.0, 0.1, 0.1, 1.0, 0.1], abs=1e-6)
    assert data["stats"]["stages"][0]["word_starts"]["recall"] == 1.0
    capsys.readouterr()

    assert main(["inspect", str(model_dir), "--text", TEXT.decode(), "--stage", "2", "--format", "json"]) == 0
    assert [s["stage"] for s in json.loads(capsys.readouterr().out)["stages"]] == [2]


def test_cli_terminal_and_html(model_dir, tmp_path, capsys):
    text_file = tmp_path / "in.txt"
    text_file.write_bytes(TEXT)
    assert main(["inspect", str(model_dir), "--file", str(text_file)]) == 0
    captured = capsys.readouterr()  # not a terminal: markers, no colour
    assert captured.out == "[Hi | |yo.\\n\n][Ok |42]\n"
    assert "stage 1: 5 chunks, 2.60 bytes per chunk" in captured.err
    out = tmp_path / "b.html"
    assert main(["inspect", str(model_dir), "--file", str(text_file), "--format", "html", "--out", str(out)]) == 0
    assert bytes(parse_page(out.read_text(encoding="utf-8")).out) == TEXT


def _one_line_error(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hnet inspect: error:") and message in err, err


def test_cli_errors(model_dir, tmp_path, capsys):
    one_stage = tmp_path / "one_stage"
    handmade_model(routing_stages=1).save_pretrained(one_stage)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    model = str(model_dir)
    _one_line_error(capsys, ["inspect", model, "--file", str(tmp_path / "missing.txt")], "no such file")
    _one_line_error(capsys, ["inspect", model, "--text", ""], "empty")
    _one_line_error(capsys, ["inspect", str(run), "--text", "x"], "no checkpoint")
    _one_line_error(capsys, ["inspect", str(one_stage), "--text", "x", "--stage", "2"], "1 routing stage")
    _one_line_error(capsys, ["inspect", model, "--text", "x", "--stage", "first"], "--stage first")
    with pytest.raises(ValueError, match="empty"):
        extract_boundaries(handmade_model(), b"")
