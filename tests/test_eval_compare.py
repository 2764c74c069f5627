"""`hnet compare` over two tiny runs: the report, the CSV and the plots."""

import csv
import json

from hnet.cli import main
from tiny_runs import tiny_hnet, tiny_transformer


def test_compare_two_tiny_runs(tmp_path):
    for name, config in (("hnet", tiny_hnet(tmp_path)), ("transformer", tiny_transformer(tmp_path))):
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
        assert main(["train", str(tmp_path / f"{name}.json"), "--out", str(tmp_path / name)]) == 0
    out = tmp_path / "report"
    assert main(["compare", str(tmp_path / "hnet"), str(tmp_path / "transformer"), "--out", str(out)]) == 0

    for name in ("report.md", "report.csv", "bpb_vs_bytes.png", "bpb_vs_flops.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "bpb_vs_flops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["run"]: r for r in csv.DictReader(open(out / "report.csv"))}
    assert rows["hnet"]["model"] == "hnet_1stage" and rows["transformer"]["model"] == "transformer"
    assert rows["hnet"]["training_bytes"] == rows["transformer"]["training_bytes"] == str(10 * 4 * 128)
    assert float(rows["hnet"]["bytes_per_chunk"]) > 1 and rows["transformer"]["bytes_per_chunk"] == ""
    for row in rows.values():
        assert float(row["flops_per_byte"]) > 0 and 0 < float(row["val_bpb"]) < 9
    report = (out / "report.md").read_text()
    assert "| hnet | text | hnet_1stage |" in report and "bpb_vs_flops.png" in report
    import matplotlib.image

    for name in ("bpb_vs_bytes.png", "bpb_vs_flops.png"):
        image = matplotlib.image.imread(out / name)
        assert image.shape[:2] == (4 * 120, int(5.5 * 120)), image.shape  # one data kind: a 5.5 x 4 in panel at 120 dpi
        assert image[..., :3].std() > 0.01  # not blank
    # the routing diagnostics beside bpb: the H-Net only (the Transformer routes nothing)
    assert "routing_vs_bytes.png" in report
    image = matplotlib.image.imread(out / "routing_vs_bytes.png")
    assert image.shape[:2] == (4 * 120, 16 * 120) and image[..., :3].std() > 0.01
    from hnet.eval.compare import summarize

    hnet = summarize(tmp_path / "hnet")
    assert [r["step"] for r in hnet.routing_logs] == list(range(1, 11)) and hnet.ratio_targets == [4.0]
    assert [r["step"] for r in hnet.structure_evals] == [0, 5, 10]
    assert hnet.structure_evals[-1]["training_bytes"] == 10 * 4 * 128
    assert not summarize(tmp_path / "transformer").routing_logs
