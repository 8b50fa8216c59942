"""detectors.evaluation.speed: the figures and their hand-computed size numbers; disabled means no figures."""
import torch
from torch import nn

from detectors.evaluation.speed import measure_speed


class OneConv(nn.Module):
    """A 1x1 conv 3 -> 2 channels (with bias) applied to each image, torchvision-style list API."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, images):
        return [self.conv(img[None]) for img in images]


DATASET = [(torch.rand(3, 4, 4), {}) for _ in range(3)]


def test_figures_and_sizes():
    out = measure_speed(OneConv(), DATASET, "cpu", latency_images=4, warmup=1, throughput_batch=2,
                        throughput_batches=2, repeats=3)
    assert {"latency_ms_p50", "latency_ms_p95", "throughput_img_s", "throughput_img_s_spread", "params", "gflops",
            "peak_rss_mb", "threads"} == set(out)
    # params: 3 * 2 weights + 2 biases = 8; FLOPs: 2 per multiply-add, 3 * 2 per pixel x 16 pixels = 192
    assert out["params"] == 8.0
    assert out["gflops"] == 192 / 1e9
    assert 0 < out["latency_ms_p50"] <= out["latency_ms_p95"] and out["throughput_img_s"] > 0
    assert out["throughput_img_s_spread"] >= 0


def test_disabled_measures_nothing():
    model = OneConv().train()
    assert measure_speed(model, DATASET, "cpu", enabled=False) == {}
    assert model.training  # not even switched to eval mode


def test_median_spread_and_nearest_rank_percentile():
    from detectors.evaluation.speed import median_and_spread, percentile

    # sorted 1, 2, 4, 8: median (2 + 4) / 2 = 3, spread 8 - 1 = 7
    assert median_and_spread([4.0, 1.0, 8.0, 2.0]) == {"median": 3.0, "spread": 7.0, "n": 4}
    # 21 values 0..20: p95 is the value at rank round(0.95 * 20) = 19
    assert percentile(list(range(21)), 0.95) == 19


def test_size_figures_need_no_timing():
    from detectors.evaluation.speed import size_figures

    out = size_figures(OneConv(), DATASET, "cpu")
    assert set(out) == {"params", "gflops", "peak_rss_mb", "threads"}
    assert (out["params"], out["gflops"]) == (8.0, 192 / 1e9)  # as in test_figures_and_sizes
