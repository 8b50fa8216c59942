"""detectors.speed: the figures and their hand-computed size numbers; disabled means no figures."""
import torch
from torch import nn

from detectors.speed import measure_speed


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
                        throughput_batches=2)
    assert {"latency_ms_p50", "latency_ms_p95", "throughput_img_s", "params", "gflops", "peak_rss_mb",
            "threads"} == set(out)
    # params: 3 * 2 weights + 2 biases = 8; FLOPs: 2 per multiply-add, 3 * 2 per pixel x 16 pixels = 192
    assert out["params"] == 8.0
    assert out["gflops"] == 192 / 1e9
    assert 0 < out["latency_ms_p50"] <= out["latency_ms_p95"] and out["throughput_img_s"] > 0


def test_disabled_measures_nothing():
    model = OneConv().train()
    assert measure_speed(model, DATASET, "cpu", enabled=False) == {}
    assert model.training  # not even switched to eval mode
