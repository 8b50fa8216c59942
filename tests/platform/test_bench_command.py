"""python -m platform.bench runs and writes its JSON and markdown (tiny sizes; no timing is asserted).
The sections that start Ray (orchestration, concurrency, memory) run in the lead's full benchmark."""
import json

import pytest

from platform.bench import main


@pytest.mark.slow  # the benchmark command end to end: five sections, every registered detector
def test_bench_writes_json_and_markdown_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # its dataset cache goes under ./runs
    assert main(["--smoke", "--only", "retinanet", "evaluation", "zoo", "peak", "data",
                 "--out", str(tmp_path / "b")]) == 0
    result = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert set(result["sections"]) == {"retinanet", "evaluation", "zoo", "peak", "data"}
    r = result["sections"]["retinanet"]
    assert r["cpu"]["ratio"]["n"] == 2 and r["cpu"]["ratio"]["median"] > 0
    assert set(r["profile_ms"]) == {f"{p}_{w}" for p in ("assign", "loss", "postprocess")
                                    for w in ("ours", "torchvision")}
    ev = result["sections"]["evaluation"]
    assert ev["20_images"]["same_metrics"] and ev["bootstrap"]["identical_ap"]
    from detectors.models import MODELS
    assert [z["detector"] for z in result["sections"]["zoo"]] == MODELS.names()  # every registered detector
    peak = result["sections"]["peak"]
    assert peak["matmul"]["n"] == 256 and peak["matmul"]["threads"] == 1 and peak["matmul"]["gflop_s"]["median"] > 0
    assert [r["detector"] for r in peak["detectors"]] == MODELS.names()  # the zoo's rows, each with a fraction
    for r in peak["detectors"]:
        assert r["train_gflops"] > 0 and r["train_img_s"] > 0 and r["fraction_of_peak"] > 0
    assert {"epoch_cache=on_workers=0", "train_2_steps_workers=2"} <= set(result["sections"]["data"])
    md = (tmp_path / "b" / "bench.md").read_text()
    for title in ("Ours vs torchvision RetinaNet", "pycocotools vs faster-coco-eval", "Every registered detector",
                  "How far from the hardware", "| fraction of peak |", "| train img/s (batch 8) |", "Data path"):
        assert title in md
    assert md in capsys.readouterr().out


def test_orchestration_overhead_splits_into_fixed_and_per_trial_parts():
    from platform.bench import split_overhead
    from platform.bench.tables import markdown

    # 1 trial: 10 s plain, 30 s platform -> overhead 20; 3 trials: 30 s plain, 56 s platform -> overhead 26.
    # Per trial (26 - 20) / (3 - 1) = 3 s; fixed 20 - 1 * 3 = 17 s.
    out = split_overhead({3: {"plain_loop_s": 30.0, "platform_run_s": 56.0, "overhead_s": 26.0},
                          1: {"plain_loop_s": 10.0, "platform_run_s": 30.0, "overhead_s": 20.0}})
    assert out["overhead_per_trial_s"] == 3.0 and out["fixed_overhead_s"] == 17.0
    # 10 trials of 60 s: 1 + (17 + 10 * 3) / 600 = 1.078333...; 15 of 100 s: 1 + (17 + 45) / 1500 = 1.041333...
    assert abs(out["projected_ratio"]["60 s x 10"] - 1.0783333) < 1e-6
    assert abs(out["projected_ratio"]["100 s x 15"] - 1.0413333) < 1e-6
    assert out["ratio"] == 56.0 / 30.0 and out["trials"] == 3
    md = markdown({"mode": "quick", "started": "now", "machine": {"cpu": "x", "cpu_cores": 2}, "load_before": 0.1,
                   "load_after": 0.2, "sections": {"orchestration": dict(out, cached_rerun_s=1.5)}})
    assert "17.0 s per study" in md and "3.0 s per trial" in md and "| 100 s | 1.200 | 1.064 | 1.047 | 1.041 |" in md



def test_padding_table_has_padded_size_pixels_and_flops():
    from platform.bench.tables import markdown

    def row(pad, padded, anchors, gflops, wall, cpu):
        return {"detector": "retinanet", "size_divisible": pad, "padded": padded, "anchors": anchors, "gflops": gflops,
                "wall_ms": {"median": wall[0], "spread": wall[1], "n": 3},
                "cpu_ms": {"median": cpu[0], "spread": cpu[1], "n": 3}}

    # 896 x 1408 = 1,261,568 px -> "1.262 M"; 800 x 1344 = 1,075,200 px -> "1.075 M" (17.3% fewer).
    # Anchors, 9 per cell: (112*176 + 56*88 + 28*44 + 14*22 + 7*11) * 9 = 26257 * 9 = 236313;
    # (100*168 + 50*84 + 25*42 + 13*21 + 7*11) * 9 = 22400 * 9 = 201600. Spreads print halved.
    rows = [row(128, [896, 1408], 236313, 300.0, (5000.0, 200.0), (4900.0, 100.0)),
            row(32, [800, 1344], 201600, 256.0, (4300.0, 20.0), (4200.0, 10.0))]
    md = markdown({"mode": "quick", "started": "now", "machine": {"cpu": "x", "cpu_cores": 2}, "load_before": 0.1,
                   "load_after": 0.2, "sections": {"padding": rows}})
    assert "| retinanet | 128 | 896 x 1408 | 1.262 M | 236313 | 300.0 | 5000 ± 100 (n=3) | 4900 ± 50 (n=3) |" in md
    assert "| retinanet | 32 | 800 x 1344 | 1.075 M | 201600 | 256.0 | 4300 ± 10 (n=3) | 4200 ± 5 (n=3) |" in md
