"""Shared by the YOLOv1 / SSD / FPN-ablation tests: a tiny drawn set, a short training, output checks."""
import torch


def drawn_set(n: int = 4, size: int = 128):
    """``n`` images of dark noise with a red square (class 0) and a green bar (class 1) each,
    placed differently per image: enough signal for a few dozen steps to lower a loss."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for i in range(n):
        img = 0.2 * torch.rand(3, size, size, generator=g)
        x0, y0 = 8 + 12 * i, 10 + 8 * i
        img[0, y0:y0 + 32, x0:x0 + 32] = 1.0
        x1, y1 = 70 - 6 * i, 60 + 4 * i
        img[1, y1:y1 + 20, x1:x1 + 44] = 1.0
        images.append(img)
        targets.append({"boxes": torch.tensor([[x0, y0, x0 + 32, y0 + 32], [x1, y1, x1 + 44, y1 + 20]],
                                              dtype=torch.float32), "labels": torch.tensor([0, 1])})
    return images, targets


def train_steps(model, images, targets, steps: int, weights=None, lr: float = 1e-3):
    """Adam on one fixed batch; returns the raw losses of the first and the last step."""
    weights = weights or {}
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    first = last = None
    for _ in range(steps):
        raw = model(images, targets)
        loss = sum(weights.get(k.removeprefix("loss_"), 1.0) * v for k, v in raw.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        values = {k: v.item() for k, v in raw.items()}
        values["total"] = loss.item()
        first = first or values
        last = values
    return first, last


def check_detections(out, n_images: int, num_classes: int, h: int, w: int, max_dets: int = 100) -> None:
    assert len(out) == n_images
    for det in out:
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert n <= max_dets
        if n:
            assert torch.isfinite(det["boxes"]).all()
            assert (det["boxes"][:, 2] >= det["boxes"][:, 0]).all() and (det["boxes"][:, 3] >= det["boxes"][:, 1]).all()
            assert det["boxes"].min() >= -1e-3 and det["boxes"][:, 2].max() <= w + 1e-3
            assert det["boxes"][:, 3].max() <= h + 1e-3
            assert det["labels"].min() >= 0 and det["labels"].max() < num_classes
            assert (det["scores"][:-1] >= det["scores"][1:]).all()
