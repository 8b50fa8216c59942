"""The markdown tables of a ``python -m platform.bench`` result (what docs/performance.md quotes):
one function per section, each given the section's figures and the result."""
from __future__ import annotations

from typing import Any, Dict, List


def fmt(ms: Dict[str, float], digits: int = 2) -> str:
    """"12.3 ± 0.4 (n=8)": the median and half the spread."""
    return f"{ms['median']:.{digits}f} ± {ms['spread'] / 2:.{digits}f} (n={ms['n']})"


def _retinanet(r: Any, result: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    lines += ["## Ours vs torchvision RetinaNet (training, tiny, 4 head convs, batch 8, 1 thread)\n",
              "| clock | ours img/s | torchvision img/s | ratio ours / torchvision (target >= 1.0) |",
              "|---|---|---|---|"]
    for clock in ("cpu", "wall"):
        c = r[clock]
        lines.append(f"| {clock} | {fmt(c['ours_img_s'], 1)} | {fmt(c['torchvision_img_s'], 1)} | "
                     f"{fmt(c['ratio'], 3)} |")
    p = r["profile_ms"]
    lines += ["\nStep parts, ms of CPU time (same head outputs):\n", "| part | ours | torchvision |",
              "|---|---|---|"]
    for part in ("assign", "loss", "postprocess"):
        lines.append(f"| {part} | {fmt(p[part + '_ours'])} | {fmt(p[part + '_torchvision'])} |")
    return lines


def _orchestration(o: Any, result: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    pr = o["projected_ratio"]
    lines += [f"\n## Orchestration overhead (trials one at a time, ~{o['per_trial_s']:.0f} s each)\n",
              "| trials | plain loop s | platform.run s | ratio | overhead s |", "|---|---|---|---|---|"]
    for n, r in o["runs"].items():
        lines.append(f"| {n} | {r['plain_loop_s']:.1f} | {r['platform_run_s']:.1f} | "
                     f"{r['platform_run_s'] / r['plain_loop_s']:.3f} | {r['overhead_s']:.1f} |")
    lines += [f"\nOverhead: {o['fixed_overhead_s']:.1f} s per study (Ray start, MLflow's parent run, speed phase, "
              f"report, shutdown) + {o['overhead_per_trial_s']:.1f} s per trial (a fresh Tune worker and its "
              f"imports, the trial's MLflow run and store rows). Cached re-run: {o['cached_rerun_s']:.2f} s "
              f"(target <= 3).\n",
              "Ratio platform.run / plain loop it gives (target <= 1.05 for trials of a minute or more):\n",
              "| trial length | 1 trial | 5 trials | 10 trials | 15 trials |", "|---|---|---|---|---|"]
    for secs in (60, 100):
        lines.append(f"| {secs} s | " + " | ".join(f"{pr[f'{secs} s x {n}']:.3f}" for n in (1, 5, 10, 15)) + " |")
    return lines


def _concurrency(c: Any, result: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    lines += [f"\n## Concurrency ({c['trials']} one-CPU trials)\n",
              "| one at a time s | two at a time s | speedup (target >= 1.8) | a trial alone s "
              "| a trial beside another s |",
              "|---|---|---|---|---|",
              f"| {c['one_at_a_time_s']:.1f} | {c['two_at_a_time_s']:.1f} | {c['speedup']:.2f} | "
              f"{fmt(c['trial_s_alone'], 1)} | {fmt(c['trial_s_two_at_a_time'], 1)} |"]
    return lines


def _evaluation(e: Any, result: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    lines += ["\n## Evaluation: pycocotools vs faster-coco-eval (bbox, generated detections)\n",
              "| images | detections | pycocotools s | faster-coco-eval s | speedup | same to 1e-6 "
              "| max abs difference |",
              "|---|---|---|---|---|---|---|"]
    for r in [e[k] for k in e if k.endswith("_images")]:
        lines.append(f"| {r['images']} | {r['detections']} | {fmt(r['pycocotools_s'])} | {fmt(r['faster_s'])} | "
                     f"{r['speedup']:.1f}x | {r['same_metrics']} | {r['max_abs_difference']:.1e} |")
    b = e["bootstrap"]
    lines.append(f"\nImage bootstrap, one resample of {b['images']} images: COCOeval accumulate "
                 f"{fmt(b['cocoeval_accumulate_ms'])} ms, ours {fmt(b['numpy_ms'])} ms ({b['speedup']:.1f}x, "
                 f"identical AP: {b['identical_ap']}).")
    return lines


def _zoo(rows: Any, result: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    lines += ["\n## Every registered detector (tiny, untrained, 1 thread)\n",
              "| detector | params M | GFLOPs/img | latency p50 ms | p95 ms | throughput img/s (batch 8) "
              "| train img/s (batch 8) | train GFLOPs/img (forward) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['detector']} | {r['params'] / 1e6:.3f} | {r['gflops']:.3f} | "
                     f"{r['latency_ms_p50']:.1f} | "
                     f"{r['latency_ms_p95']:.1f} | {r['throughput_img_s']:.1f} | "
                     + (f"{r['train_img_s']:.1f} | {r['train_gflops']:.3f} |" if "train_img_s" in r else "- | - |"))
    return lines


def _peak(p: Any, result: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    hw = result["machine"]
    mm = p["matmul"]
    lines += ["\n## How far from the hardware each detector trains (tiny, 1 thread)\n",
              f"Peak: dense fp32 torch.mm of two {mm['n']} x {mm['n']} matrices on {mm['threads']} torch thread, "
              f"{mm['gflop_s']['median']:.1f} GFLOP/s (median of {len(mm['wall_s'])} runs after 2 warm-up; "
              f"best {mm['gflop_s']['best']:.1f}; from CPU time {mm['cpu_gflop_s']['median']:.1f}) on "
              f"{hw.get('cpu')}. Achieved = forward GFLOPs per training image x 3 x training img/s; "
              f"counted (forward + backward) / forward beside it.\n",
              "| detector | train GFLOPs/img (forward) | counted fwd+bwd / fwd | train img/s | achieved GFLOP/s "
              "| fraction of peak |", "|---|---|---|---|---|---|"]
    for r in p["detectors"]:
        lines.append(f"| {r['detector']} | {r['train_gflops']:.3f} | {r['counted_passes']:.2f} | "
                     f"{r['train_img_s']:.1f} ± {r['train_img_s_spread'] / 2:.1f} | {r['achieved_gflop_s']:.1f} | "
                     f"{r['fraction_of_peak']:.3f} |")
    if p.get("note"):
        lines.append(f"\n{p['note']}")
    return lines


def _memory(m: Any, result: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    lines += ["\n## Memory of a Ray worker running a tiny trial (target: peak <= 1.5 GB)\n",
              "| step | RSS MiB | of which shared-library pages MiB | peak MiB |", "|---|---|---|---|"]
    for step, r in m["steps"].items():
        lines.append(f"| {step} | {r.get('VmRSS', float('nan')):.0f} | {r.get('RssFile', float('nan')):.0f} | "
                     f"{r['peak']:.0f} |")
    lines.append(f"\ntorch._dynamo loaded (by torchvision.ops): {m['torch_dynamo']}.")
    return lines


def _data(d: Any, result: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    lines += ["\n## Data path\n", "| what | wall s |", "|---|---|"]
    for k, v in d.items():
        lines.append(f"| {k} | {v['wall']:.3f}" + (f" ({v['img_s']:.1f} img/s)" if "img_s" in v else "") + " |")
    return lines


def _padding(rows: Any, result: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    lines += ["\n## Padding to 32 against the coarsest stride (paper scale, one 800 x 1333 image, 1 thread)\n",
              "| detector | pad to | padded | pixels | anchors | GFLOPs | latency ms (wall) | latency ms (CPU) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h, w = r["padded"]
        lines.append(f"| {r['detector']} | {r['size_divisible']} | {h} x {w} | {h * w / 1e6:.3f} M | "
                     f"{r['anchors']} | {r['gflops']:.1f} | {fmt(r['wall_ms'], 0)} | {fmt(r['cpu_ms'], 0)} |")
    return lines


SECTIONS = {"retinanet": _retinanet, "orchestration": _orchestration, "concurrency": _concurrency,
            "evaluation": _evaluation, "zoo": _zoo, "peak": _peak, "memory": _memory, "data": _data,
            "padding": _padding}


def markdown(result: Dict[str, Any]) -> str:
    """The tables of a result: a heading with the machine and its load, then each section it holds."""
    hw = result["machine"]
    lines = [f"# platform.bench ({result['mode']}), {result['started']}\n",
             f"Machine: {hw.get('cpu')}, {hw.get('cpu_cores')} cores" + (f", {hw['gpu']}" if hw.get("gpu") else "")
             + f"; torch {hw.get('torch')}, Python {hw.get('python')}; 1-minute load average "
             f"{result['load_before']:.2f} before, {result['load_after']:.2f} after (2.0 on 2 cores = fully busy). "
             f"Median ± half the spread (max - min) over n repeats.\n"]
    for name, table in SECTIONS.items():
        if name in result["sections"]:
            lines += table(result["sections"][name], result)
    return "\n".join(lines) + "\n"
