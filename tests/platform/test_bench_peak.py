"""The bench's peak section: achieved training GFLOP/s against the single-thread matmul peak (arithmetic and
tables only; nothing is timed here)."""
import json

import pytest

from platform.bench.tables import markdown
from platform.bench.peak import fraction_rows, over_peak_note, peak_gflop_s, training_gflop_s


def zoo_row(name, fwd, fwd_bwd, img_s, spread=0.0):
    return {"detector": name, "threads": 1, "train_gflops": fwd, "train_gflops_fwd_bwd": fwd_bwd, "train_img_s": img_s,
            "train_img_s_spread": spread}


def test_training_gflop_s_is_forward_flops_times_three_times_img_s():
    # tiny RetinaNet: 0.111 GFLOP forward per training image x 3 x 110 img/s = 36.63 GFLOP/s
    assert training_gflop_s(0.111, 110.0) == pytest.approx(36.63)
    # the 0.33 GFLOP is already forward x 3: times 3 again would be 108.9, so pass it as one pass
    assert training_gflop_s(0.33, 110.0, passes=1) == pytest.approx(36.3)


def test_peak_from_the_median_and_the_fastest_matmul():
    # n = 2048: 2 * 2048^3 = 17,179,869,184 FLOPs; runs of 0.2, 0.3, 0.25 s: median 0.25 s -> 68.72 GFLOP/s,
    # fastest 0.2 s -> 85.90 GFLOP/s
    g = peak_gflop_s(2 * 2048 ** 3, [0.2, 0.3, 0.25])
    assert g["median"] == pytest.approx(68.719476736) and g["best"] == pytest.approx(85.89934592)


def test_fraction_of_peak_and_the_note_above_one():
    # retinanet: 0.111 x 3 x 110 = 36.63 GFLOP/s of a 100 GFLOP/s peak -> 0.3663; counted 0.32856 / 0.111 = 2.96.
    # odd: 0.5 x 3 x 80 = 120 GFLOP/s -> 1.2, above the peak; a row without training figures is left out.
    rows = fraction_rows([zoo_row("retinanet", 0.111, 0.32856, 110.0), zoo_row("odd", 0.5, 1.5, 80.0),
                          {"detector": "untimed", "threads": 1}], peak=100.0)
    assert [r["detector"] for r in rows] == ["retinanet", "odd"]
    assert rows[0]["achieved_gflop_s"] == pytest.approx(36.63)
    assert rows[0]["fraction_of_peak"] == pytest.approx(0.3663)
    assert rows[0]["counted_passes"] == pytest.approx(2.96)
    assert rows[1]["fraction_of_peak"] == pytest.approx(1.2)
    assert over_peak_note(rows[:1]) is None
    note = over_peak_note(rows)
    assert note.startswith("odd above 1") and "FLOPs counted exceed the work done" in note
    assert "peak is underestimated" in note


def test_peak_table_in_the_markdown():
    mm = {"n": 2048, "threads": 1, "wall_s": [0.2, 0.3, 0.25], "gflop_s": {"median": 68.72, "best": 85.9},
          "cpu_gflop_s": {"median": 70.0, "best": 86.0}}
    rows = fraction_rows([zoo_row("retinanet", 0.111, 0.32856, 110.0, spread=8.0)], peak=68.72)
    md = markdown({"mode": "full", "started": "now", "machine": {"cpu": "AMD EPYC", "cpu_cores": 2},
                   "load_before": 0.1, "load_after": 0.2, "sections": {"peak": {"matmul": mm, "detectors": rows,
                                                                                  "note": over_peak_note(rows)}}})
    assert "2048 x 2048 matrices on 1 torch thread, 68.7 GFLOP/s (median of 3 runs" in md
    assert "best 85.9; from CPU time 70.0) on AMD EPYC" in md
    # 36.63 / 68.72 = 0.53303...; the spread of 8 img/s prints halved
    assert "| retinanet | 0.111 | 2.96 | 110.0 ± 4.0 | 36.6 | 0.533 |" in md
    assert "above 1" not in md


def test_peak_alone_runs_the_zoo_first_and_reuses_its_figures(tmp_path, monkeypatch):
    import platform.bench as bench
    from platform.bench import measurements

    zoo_calls = []

    def fake_zoo(paths, size):
        zoo_calls.append(size["zoo_train_steps"])
        return [dict(zoo_row("retinanet", 0.111, 0.32856, 110.0), params=366081.0, gflops=0.111,
                     latency_ms_p50=10.0, latency_ms_p95=12.0, throughput_img_s=150.0)]

    # matmul of n = 256 (smoke): 2 * 256^3 = 33,554,432 FLOPs in 1 ms -> 33.55 GFLOP/s;
    # achieved 36.63 / 33.554432 = 1.0917 -> above 1, with the note
    monkeypatch.setattr(bench, "bench_zoo", fake_zoo)
    monkeypatch.setattr(measurements, "matmul_peak", lambda n, repeats, threads: {
        "n": n, "threads": threads, "flop": 2 * n ** 3, "wall_s": [1e-3] * repeats, "cpu_s": [1e-3] * repeats})
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--smoke", "--only", "peak", "--out", str(tmp_path / "b")]) == 0
    assert zoo_calls == [1]  # once, for the peak section; not measured twice
    assert bench.main(["--smoke", "--only", "peak", "zoo", "--out", str(tmp_path / "c")]) == 0
    assert zoo_calls == [1, 1]  # asked for after the peak: still once, and first
    assert list(json.loads((tmp_path / "c" / "bench.json").read_text())["sections"]) == ["zoo", "peak"]
    result = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert list(result["sections"]) == ["zoo", "peak"]
    row = result["sections"]["peak"]["detectors"][0]
    assert row["fraction_of_peak"] == pytest.approx(36.63 / 33.554432)
    md = (tmp_path / "b" / "bench.md").read_text()
    assert "| retinanet | 0.111 | 2.96 | 110.0 ± 0.0 | 36.6 | 1.092 |" in md and "retinanet above 1" in md
    assert "| retinanet | 0.366 | 0.111 | 10.0 | 12.0 | 150.0 | 110.0 | 0.111 |" in md  # the zoo's new columns
