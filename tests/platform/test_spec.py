"""Study files: valid ones load fully resolved; each malformed one fails with one line naming file and key."""
import os

import pytest

from platform.study.expand import expand
from platform.study.load import StudyError, load_study

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BASE = """\
name: t
dataset: {kind: synthetic, synthetic: {num_train: 8, num_val: 4}}
detector: {name: retinanet}
loss: {name: focal}
"""


def write(tmp_path, text, name="study.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", ["smoke.yaml", "focal_gamma_sweep.yaml"])
def test_repo_studies_load(name):
    study = load_study(os.path.join(REPO_ROOT, "studies", name))
    assert study.detector.name == "retinanet" and study.loss.name == "focal"
    assert study.dataset.kind == "synthetic"


def test_smoke_study_is_small_and_has_two_trials_worth_of_grid():
    study = load_study(os.path.join(REPO_ROOT, "studies", "smoke.yaml"))
    assert study.sweep.grid == {"loss.params.gamma": [0, 2]} and study.sweep.seeds == [0]
    assert study.train.max_steps <= 10 and study.dataset.synthetic["num_train"] <= 32


def test_gamma_sweep_pairs_match_the_paper_table_1b():
    study = load_study(os.path.join(REPO_ROOT, "studies", "focal_gamma_sweep.yaml"))
    pairs = [(v["loss.params.gamma"], v["loss.params.alpha"]) for v in study.sweep.variants]
    assert pairs == [(0, 0.75), (0.5, 0.5), (1, 0.25), (2, 0.25), (5, 0.25)]
    assert study.sweep.seeds == [0, 1, 2]  # 3 seeds: the seed test can give a verdict
    assert (study.resources.cpus_per_trial, study.resources.max_concurrent) == (1, 2)


def test_defaults_and_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = BASE + "train: {lr: 1e-3, loss_weights: {cls: 2}}\neval: {max_dets: 10}\n"
    study = load_study(write(tmp_path, text))
    assert study.train.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string; the study loader does not
    assert study.train.loss_weights == {"cls": 2.0}  # an unnamed loss weighs 1 (in the training loop)
    assert study.train.epochs == 6 and study.eval.max_dets == 10 and study.eval.speed.latency_images == 50
    runs = str(tmp_path / "runs")
    assert study.output.runs_dir == runs and study.output.reports_dir == str(tmp_path / "reports")
    assert study.tracking.mlflow_uri == f"sqlite:///{runs}/mlflow.db"
    assert study.tracking.store_url == f"sqlite:///{runs}/results.db"
    assert study.dataset.cache_dir == os.path.join(runs, "datasets")
    assert study.sweep.seeds == [0] and study.resources.max_failures == 1
    assert not os.path.exists(runs)  # loading creates nothing


def test_param_values_are_normalised_and_balanced_ce_alpha_forms(tmp_path):
    study = load_study(write(tmp_path, BASE.replace("{name: focal}", "{name: focal, params: {gamma: 2}}")))
    assert study.loss.params == {"gamma": 2.0} and isinstance(study.loss.params["gamma"], float)
    for alpha in ("0.75", "[0.5, 1, 2, 1, 1]", "inverse_frequency"):
        text = BASE.replace("{name: focal}", "{name: balanced_ce, params: {alpha: %s}}" % alpha)
        assert load_study(write(tmp_path, text)).loss.params["alpha"] in (0.75, [0.5, 1.0, 2.0, 1.0, 1.0],
                                                                            "inverse_frequency")


def test_coco_paths_resolve_against_cwd(tmp_path, monkeypatch):
    for d in ("train", "val"):
        (tmp_path / d).mkdir()
        (tmp_path / f"{d}.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    text = BASE.replace("{kind: synthetic, synthetic: {num_train: 8, num_val: 4}}",
                        "{kind: coco, train_images: train, train_annotations: train.json, "
                        "val_images: val, val_annotations: val.json}")
    study = load_study(write(tmp_path, text))
    assert study.dataset.train_images == str(tmp_path / "train")
    assert study.dataset.val_annotations == str(tmp_path / "val.json")


COCO_MISSING = BASE.replace("{kind: synthetic, synthetic: {num_train: 8, num_val: 4}}",
                            "{kind: coco, train_images: /no/such/dir, train_annotations: /no/a.json, "
                            "val_images: /no/v, val_annotations: /no/v.json}")

# (id, file text, key path in the message, fragment of the message)
MALFORMED = [
    ("yaml-syntax", "name: t\n  detector: [1,\n", "line 2, column 11", "mapping values are not allowed"),
    ("not-a-mapping", "- name: t\n", "", "top level must be a mapping"),
    ("empty-file", "", "", "got an empty file"),
    ("missing-name", BASE.replace("name: t\n", ""), "name", "required key is missing"),
    ("bad-name", BASE.replace("name: t", "name: My Study"), "name", "must match"),
    ("unknown-top-key", BASE + "trian: {epochs: 2}\n", "trian", "unknown key; did you mean 'train'?"),
    ("unknown-nested-key", BASE + "eval: {speed: {enabeld: false}}\n", "eval.speed.enabeld", "unknown key"),
    ("wrong-type", BASE + "train: {epochs: six}\n", "train.epochs", "expected an integer, got 'six'"),
    ("quoted-number", BASE + "train: {lr: '0.01'}\n", "train.lr", "expected a number, got '0.01'"),
    ("out-of-range", BASE + "train: {batch_size: 0}\n", "train.batch_size", "must be >= 1, got 0"),
    ("bad-choice", BASE + "train: {optimizer: adam}\n", "train.optimizer", "expected 'sgd' or 'adamw'"),
    ("section-not-mapping", BASE + "train: 5\n", "train", "expected a mapping"),
    ("duplicate-key", BASE + "train: {}\ntrain: {}\n", "line 6, column 1", "duplicate key 'train'"),
    ("unknown-detector", BASE.replace("retinanet", "retina"), "detector.name",
     "unknown detector 'retina'; did you mean 'retinanet'? (known: "),
    ("unknown-loss", BASE.replace("{name: focal}", "{name: focall}"), "loss.name",
     "unknown classification loss 'focall'; did you mean 'focal'? (known: balanced_ce, ce, focal"),
    ("unknown-loss-param", BASE.replace("{name: focal}", "{name: focal, params: {gama: 2}}"),
     "loss.params.gama", "unknown parameter of classification loss 'focal'; did you mean 'gamma'?"),
    ("reduction-is-not-a-param", BASE.replace("{name: focal}", "{name: focal, params: {reduction: sum}}"),
     "loss.params.reduction", "unknown parameter"),
    ("loss-param-type", BASE.replace("{name: focal}", "{name: focal, params: {gamma: two}}"),
     "loss.params.gamma", "expected a number, got 'two'"),
    ("unknown-detector-param", BASE.replace("{name: retinanet}", "{name: retinanet, params: {head_widht: 8}}"),
     "detector.params.head_widht", "did you mean 'head_width'?"),
    ("unknown-generator-key", BASE.replace("num_val: 4", "num_vall: 4"), "dataset.synthetic.num_vall",
     "unknown generator setting; did you mean 'num_val'?"),
    ("non-finite-number", BASE + "train: {weight_decay: .inf}\n", "train.weight_decay", "expected a number, got inf"),
    ("generator-range", BASE.replace("num_val: 4", "num_val: 4, num_classes: 99"), "dataset.synthetic.num_classes",
     "'num_classes' must be in 1.."),
    ("coco-path-missing", COCO_MISSING, "dataset.train_images", "no such directory: /no/such/dir"),
    ("coco-path-required", BASE.replace("kind: synthetic, synthetic: {num_train: 8, num_val: 4}", "kind: coco"),
     "dataset.train_images", "required for kind 'coco'"),
    ("empty-seeds", BASE + "sweep: {seeds: []}\n", "sweep.seeds", "must not be empty"),
    ("repeated-seed", BASE + "sweep: {seeds: [1, 1]}\n", "sweep.seeds", "seeds repeat"),
    ("empty-grid-list", BASE + "sweep: {grid: {loss.params.gamma: []}}\n", "sweep.grid.loss.params.gamma",
     "empty list"),
    ("grid-not-a-list", BASE + "sweep: {grid: {loss.params.gamma: two}}\n", "sweep.grid.loss.params.gamma",
     "expected a list of numbers, got 'two'"),
    ("grid-unknown-key", BASE + "sweep: {grid: {train.lrr: [0.1]}}\n", "sweep.grid.train.lrr",
     "no such key in the study config; did you mean 'train.lr'?"),
    ("grid-unknown-param", BASE + "sweep: {grid: {loss.params.gama: [1, 2]}}\n", "sweep.grid.loss.params.gama",
     "no such key in the study config; did you mean 'loss.params.gamma'?"),
    ("grid-not-sweepable", BASE + "sweep: {grid: {resources.max_concurrent: [1, 2]}}\n",
     "sweep.grid.resources.max_concurrent", "cannot sweep"),
    ("grid-value-type", BASE + "sweep: {grid: {loss.params.gamma: [0, two]}}\n",
     "sweep.grid.loss.params.gamma[1]", "expected a number, got 'two'"),
    ("grid-value-range", BASE + "sweep: {grid: {train.epochs: [2, 0]}}\n", "sweep.grid.train.epochs[1]",
     "must be >= 1, got 0"),
    ("grid-value-twice", BASE + "sweep: {grid: {train.epochs: [2, 2]}}\n", "sweep.grid.train.epochs[1]",
     "listed twice"),
    ("variant-unknown-key", BASE + "sweep: {variants: [{loss.params.gamma: 1, loss.params.alfa: 0.5}]}\n",
     "sweep.variants[0].loss.params.alfa", "no such key"),
    ("variant-value-type", BASE + "sweep: {variants: [{loss.params.gamma: 1}, {train.schedule: linear}]}\n",
     "sweep.variants[1].train.schedule", "expected 'cosine', 'multistep' or 'constant', got 'linear'"),
    ("variant-and-grid", BASE + "sweep: {grid: {train.epochs: [1]}, variants: [{train.epochs: 2}]}\n",
     "sweep.variants[0].train.epochs", "also swept in sweep.grid"),
    # COCO AP counts at most 100 detections per image (maxDets 1, 10, 100): more would not be scored
    ("max-dets-above-coco", BASE + "eval: {max_dets: 150}\n", "eval.max_dets", "must be <= 100, got 150"),
    ("max-dets-grid", BASE + "sweep: {grid: {eval.max_dets: [100, 300]}}\n", "sweep.grid.eval.max_dets[1]",
     "must be <= 100, got 300"),
    # the detectors' declarations: loss names, loss roles, parameter ranges, phases
    ("loss-weight-typo", BASE + "train: {loss_weights: {clss: 2}}\n", "train.loss_weights.clss",
     "detector 'retinanet' returns no loss 'clss'; did you mean 'cls'? (its losses: cls, box)"),
    ("loss-role-unknown", BASE + "losses: {rpn_box: {name: l1}}\n", "losses.rpn_box",
     "detector 'retinanet' takes no 'rpn_box' loss; did you mean 'box'? (its loss roles: cls, box)"),
    ("loss-role-twice", BASE + "losses: {cls: {name: ce}}\n", "losses.cls", "already set by the 'loss' section"),
    ("loss-role-wrong-kind", BASE + "losses: {box: {name: focal}}\n", "losses.box.name", "unknown box loss 'focal'"),
    ("loss-param-range", BASE.replace("{name: focal}", "{name: focal, params: {gamma: -1}}"),
     "loss.params.gamma", "must be in [0, 20], got -1"),
    ("detector-param-range", BASE.replace("{name: retinanet}", "{name: retinanet, params: {pos_iou: 1.5}}"),
     "detector.params.pos_iou", "must be in (0, 1), got 1.5"),
    ("detector-param-choice", BASE.replace("{name: retinanet}", "{name: gfl, params: {box: gauss}}")
     .replace("{name: focal}", "{name: qfl}"), "detector.params.box",
     "expected one of 'dirac', 'gaussian', 'general', 'general_dfl', got 'gauss'"),
    ("detector-params-ordered", BASE.replace("{name: retinanet}", "{name: retinanet, params: {neg_iou: 0.6}}"),
     "detector.params.neg_iou", "neg_iou (0.6) must not exceed pos_iou (0.5)"),
    ("joint-score-needs-soft-loss", BASE.replace("{name: retinanet}", "{name: gfl}"), "loss.name",
     "quality 'joint' trains soft IoU targets: use the 'qfl' (or 'ce') loss, not 'focal'"),
    ("phase-loss-typo", BASE + "train: {phases: [{name: a, epochs: 1, losses: [clss]}]}\n",
     "train.phases[0].losses[0]", "returns no loss 'clss'; did you mean 'cls'?"),
    ("phase-part-typo", BASE + "train: {phases: [{name: a, epochs: 1, frozen: [backbone, hed]}]}\n",
     "train.phases[0].frozen[1]",
     "'hed' names no parameters of the model; did you mean 'head'? (at that depth: backbone, head)"),
    ("phases-and-epochs", BASE + "train: {epochs: 3, phases: [{name: a, epochs: 1}]}\n", "train",
     "give each phase its epochs, not train.epochs"),
    ("phase-names-repeat", BASE + "train: {phases: [{name: a, epochs: 1}, {name: a, epochs: 1}]}\n", "train",
     "phase names repeat"),
    ("grid-loss-weight-typo", BASE + "sweep: {grid: {train.loss_weights.bx: [1, 2]}}\n",
     "sweep.grid.train.loss_weights.bx", "no such key in the study config; did you mean 'train.loss_weights.box'?"),
    # Values that used to pass validation and fail only in a Ray worker (issue 12, part 1):
    # np.random.seed takes [0, 2^32); 0 val images divided by zero in the speed figures; a
    # per-class alpha of the wrong length failed in the loss; negative loss weights maximise
    # their loss; a phase prefix that names no parameter failed in apply_phase.
    ("seed-range", BASE + "sweep: {seeds: [0, 4294967296]}\n", "sweep.seeds[1]", "must be <= 4294967295"),
    ("negative-seed", BASE + "sweep: {seeds: [-1]}\n", "sweep.seeds[0]", "must be >= 0, got -1"),
    ("no-val-images", BASE.replace("num_val: 4", "num_val: 0"), "dataset.synthetic.num_val",
     "'num_val' must be in 1..1000000, got 0"),
    ("no-objects", BASE.replace("num_val: 4", "num_val: 4, objects_per_image: [0, 0]"),
     "dataset.synthetic.objects_per_image", "max must be >= 1"),
    ("absurd-image-size", BASE.replace("num_val: 4", "num_val: 4, image_size: 100000"),
     "dataset.synthetic.image_size", "'image_size' must be in 16..4096, got 100000"),
    ("alpha-per-class-length", BASE.replace("{name: focal}", "{name: focal, params: {alpha: [1, 2]}}"),
     "loss.params.alpha", "one value per class: the dataset has 5 classes, got 2 values"),
    ("alpha-length-swept", BASE.replace("{name: focal}", "{name: focal, params: {alpha: [1, 1, 1, 1, 1]}}")
     + "sweep: {grid: {dataset.synthetic.num_classes: [5, 3]}}\n", "sweep.grid.dataset.synthetic.num_classes[1]",
     "loss.params.alpha: one value per class: the dataset has 3 classes, got 5 values"),
    ("negative-loss-weight", BASE + "train: {loss_weights: {box: -1}}\n", "train.loss_weights.box",
     "must be >= 0, got -1"),
    ("absurd-lr", BASE + "train: {lr: 100}\n", "train.lr", "must be <= 10, got 100"),
    ("score-thresh-one", BASE + "eval: {score_thresh: 1.0}\n", "eval.score_thresh", "must be < 1, got 1.0"),
    ("absurd-reg-max", BASE.replace("{name: retinanet}", "{name: gfl, params: {reg_max: 100000}}")
     .replace("{name: focal}", "{name: qfl}"), "detector.params.reg_max", "must be in [1, 128], got 100000"),
    ("min-above-max-size", BASE.replace("{name: retinanet}", "{name: retinanet, params: {min_size: 600, "
                                        "max_size: 400}}"), "detector.params.min_size",
     "min_size (600) must not exceed max_size (400)"),
    ("phase-prefix", BASE + "train: {phases: [{name: heads, epochs: 1, trainable: [head.cls_subnet, head.clss]}]}\n",
     "train.phases[0].trainable[1]", "'head.clss' names no parameters of the model; did you mean "
     "'head.cls_out'? (at that depth: backbone.body, head.box_out, head.box_subnet, head.cls_out, head.cls_subnet)"),
    ("frozen-prefix", BASE + "train: {phases: [{name: a, epochs: 1, frozen: [backbon]}]}\n",
     "train.phases[0].frozen[0]", "'backbon' names no parameters of the model; did you mean 'backbone'?"),
    ("runs-dir-under-a-file", BASE + "output: {runs_dir: %s/x}\n" % os.path.abspath(__file__), "output.runs_dir",
     "cannot be created: %s is a file, not a directory" % os.path.abspath(__file__)),
    ("store-url", BASE + "tracking: {store_url: 'not a url'}\n", "tracking.store_url", "not a database URL"),
    ("store-dialect", BASE + "tracking: {store_url: 'nosuchdb://h/x'}\n", "tracking.store_url",
     "not a database URL SQLAlchemy knows"),
    # multi-worker trials: each global batch splits evenly; one GPU (NCCL rank) per worker
    ("workers-zero", BASE + "resources: {workers_per_trial: 0}\n", "resources.workers_per_trial",
     "must be >= 1, got 0"),
    ("workers-split-batch", BASE + "train: {batch_size: 6}\nresources: {workers_per_trial: 4}\n",
     "resources.workers_per_trial", "4 workers cannot split train.batch_size 6 evenly"),
    ("workers-swept-batch", BASE + "resources: {workers_per_trial: 2}\n"
     "sweep: {grid: {train.batch_size: [4, 3]}}\n", "sweep.grid.train.batch_size[1]",
     "2 workers cannot split train.batch_size 3 evenly"),
    ("workers-fractional-gpu", BASE + "resources: {workers_per_trial: 2, gpus_per_trial: 0.5}\n",
     "resources.gpus_per_trial", "must be a whole number with workers_per_trial > 1"),
]


@pytest.mark.parametrize("text,path,fragment", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_study_is_one_line_naming_file_and_key(tmp_path, text, path, fragment):
    source = write(tmp_path, text)
    with pytest.raises(StudyError) as info:
        load_study(source)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{source}: {path}: " if path else f"{source}: "), message
    assert fragment in message, message
    assert info.value.file == source and info.value.path == path


def test_missing_file_names_it(tmp_path):
    with pytest.raises(StudyError, match=r"nope\.yaml: no such file"):
        load_study(str(tmp_path / "nope.yaml"))


def test_loss_roles_phases_and_weights_reach_the_trials(tmp_path):
    text = BASE + ("losses: {box: {name: smooth_l1, params: {beta: 0.5}}}\n"
                   "train: {loss_weights: {box: 2}, phases: [{name: head, epochs: 1, trainable: [head], "
                   "losses: [cls]}, {name: all, epochs: 2, lr: 0.002}]}\n"
                   "sweep: {grid: {losses.box.params.beta: [0.5, 0.25]}}\n")
    study = load_study(write(tmp_path, text))
    assert study.train.epochs == 3  # the phases' total
    trials = expand(study)
    assert [t["losses"]["box"] for t in trials] == [{"name": "smooth_l1", "params": {"beta": b}} for b in (0.5, 0.25)]
    assert trials[0]["train"]["loss_weights"] == {"box": 2.0}
    assert [p["name"] for p in trials[0]["train"]["phases"]] == ["head", "all"]
    # a role the study leaves to its default can still be swept
    swept = load_study(write(tmp_path, BASE + "sweep: {grid: {losses.box.params.beta: [0.1, 0.2]}}\n", "b.yaml"))
    assert [t["losses"]["box"] for t in expand(swept)] == [{"name": "smooth_l1", "params": {"beta": b}}
                                                          for b in (0.1, 0.2)]
def test_phase_prefixes_that_name_parameters_pass(tmp_path):
    text = BASE + "train: {phases: [{name: heads, epochs: 1, trainable: [head], frozen: [head.cls_subnet.0]}]}\n"
    study = load_study(write(tmp_path, text))
    assert study.train.phases[0].trainable == ["head"]


def test_local_resources_are_checked_against_this_machine(tmp_path, monkeypatch):
    import torch

    from platform.run import check_local_resources

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    gpus = torch.cuda.device_count()
    study = load_study(write(tmp_path, BASE + "resources: {gpus_per_trial: %d}\n" % (gpus + 1)))
    with pytest.raises(StudyError, match=r"resources\.gpus_per_trial: %d GPUs per trial, but this machine has %d"
                       % (gpus + 1, gpus)):
        check_local_resources(study, None)
    check_local_resources(study, "ray://head:10001")  # a cluster may have them: not checked here
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    check_local_resources(study, None)


def test_a_multi_worker_trial_is_checked_whole_against_this_machine(tmp_path, monkeypatch):
    from platform.run import check_local_resources

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cpus = os.cpu_count() or 1
    # each worker fits, the trial does not: cpus workers of 1 CPU plus 0.5 for the trial's own process
    study = load_study(write(tmp_path, BASE + "train: {batch_size: %d}\nresources: {workers_per_trial: %d}\n"
                             % (cpus, cpus)))
    with pytest.raises(StudyError, match=r"resources\.workers_per_trial: a trial takes %g CPUs \(%d workers x 1 "
                       r"CPUs, plus 0\.5 for the trial's own process\), but this machine has %d CPUs"
                       % (cpus + 0.5, cpus, cpus)):
        check_local_resources(study, None)
    half = load_study(write(tmp_path, BASE + "train: {batch_size: %d}\nresources: {workers_per_trial: %d, "
                            "cpus_per_trial: 0.5}\n" % (cpus, cpus)))
    check_local_resources(half, None)  # cpus x 0.5 + 0.5 <= cpus for any machine with a CPU or more
