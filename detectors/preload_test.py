def setup():
    import torch, torchvision
    import detectors.train
