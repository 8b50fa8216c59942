"""python -m platform.bench runs and writes its JSON and markdown (tiny sizes; no timing is asserted).
The sections that start Ray (orchestration, concurrency, memory) run in the lead's full benchmark."""
import json

from platform.bench import main


def test_bench_writes_json_and_markdown_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # its dataset cache goes under ./runs
    assert main(["--smoke", "--only", "retinanet", "evaluation", "zoo", "data", "--out", str(tmp_path / "b")]) == 0
    result = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert set(result["sections"]) == {"retinanet", "evaluation", "zoo", "data"}
    r = result["sections"]["retinanet"]
    assert r["cpu"]["ratio"]["n"] == 2 and r["cpu"]["ratio"]["median"] > 0
    assert set(r["profile_ms"]) == {f"{p}_{w}" for p in ("assign", "loss", "postprocess")
                                    for w in ("ours", "torchvision")}
    ev = result["sections"]["evaluation"]
    assert ev["20_images"]["same_metrics"] and ev["bootstrap"]["identical_ap"]
    from detectors.models import MODELS
    assert [z["detector"] for z in result["sections"]["zoo"]] == MODELS.names()  # every registered detector
    assert {"epoch_cache=on_workers=0", "train_2_steps_workers=2"} <= set(result["sections"]["data"])
    md = (tmp_path / "b" / "bench.md").read_text()
    for title in ("Ours vs torchvision RetinaNet", "pycocotools vs faster-coco-eval", "Every registered detector",
                  "Data path"):
        assert title in md
    assert md in capsys.readouterr().out
