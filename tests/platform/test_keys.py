"""platform.study.keys: every dotted key of a study, with its range and choices, from the schema and the components."""
import pytest

from detectors.registry import ConfigError
from platform.study.checks import validate
from platform.study.expand import expand
from platform.study.keys import KeySpace, fields_at, set_key
from platform.study.load import StudyError, load_study

RAW = {"name": "t", "dataset": {"kind": "synthetic", "synthetic": {"num_train": 8, "num_val": 4}},
       "detector": {"name": "retinanet"}, "loss": {"name": "focal", "params": {"alpha": 0.25}}}


@pytest.fixture(scope="module")
def space():
    return KeySpace(validate(RAW))


def test_schema_keys_carry_their_field_bounds_and_choices(space):
    batch = space.lookup("train.batch_size")  # Field(8, ge=1, le=1024)
    assert (batch.name, batch.default, batch.kind, batch.describe()) == ("batch_size", 8, "integer",
                                                                          "an integer in [1, 1024]")
    assert space.lookup("train.grad_clip").describe() == "a number in (0, 1000000] or null"  # Optional, gt=0, le=1e6
    assert space.lookup("train.schedule").choices == ("cosine", "multistep", "constant")
    assert space.lookup("eval.speed.repeats").describe() == "an integer in [1, 100]"  # a nested section


def test_component_keys_are_the_chosen_components_declarations(space):
    gamma = space.lookup("loss.params.gamma")  # focal_loss(gamma: float = 2.0), declared in [0, 20]
    assert (gamma.default, gamma.describe()) == (2.0, "a number in [0, 20]")
    assert space.lookup("losses.cls.params.gamma") is gamma  # the primary role, under either section
    assert space.lookup("losses.box.params.beta").default == pytest.approx(1 / 9)  # smooth_l1, the box default
    assert space.lookup("losses.box.name").choices == ("l1", "smooth_l1")
    assert "retinanet" in space.lookup("detector.name").choices
    weight = space.lookup("train.loss_weights.box")  # an unnamed weight is 1; LossWeight is [0, 1000]
    assert (weight.default, weight.describe()) == (1.0, "a number in [0, 1000]")
    assert KeySpace(validate({**RAW, "detector": {"name": "yolov1"}, "loss": None})).lookup(
        "train.loss_weights.box").default == 5.0  # YOLOv1's lambda_coord
    assert space.lookup("dataset.synthetic.num_train").kind == "integer"


def test_sections_and_unknown_keys(space):
    for key in ("losses.box", "loss.params", "train.phases", "eval.speed"):
        with pytest.raises(ConfigError) as info:
            space.lookup(key)
        assert not info.value.unknown_key and info.value.msg == "a section, not a single value: name a key inside it"
    for key in ("detector.params.zz", "losses.rpn_box.name", "train.epochs.x", "dataset.synthetic.zz"):
        with pytest.raises(ConfigError) as info:
            space.lookup(key)
        assert info.value.unknown_key and info.value.loc == tuple(key.split(".")), key
    keys = space.keys()
    assert "detector.params.pos_iou" in keys and "dataset.synthetic.num_train" in keys
    assert "resources.max_failures" not in keys and "name" not in keys  # cannot vary


def test_fields_at_lists_the_items_of_lists_and_mappings_of_sections():
    assert fields_at(())[:3] == ("name", "description", "dataset")
    assert fields_at(("train", "phases", 0))[:3] == ("name", "epochs", "trainable")
    assert fields_at(("losses", "box")) == ("name", "params")
    assert fields_at(("detector", "params")) == ()  # the component says: build.check_components


def _load_error(tmp_path, tail: str):
    """The StudyError of a minimal RetinaNet study with ``tail`` appended, and the file's path."""
    path = tmp_path / "s.yaml"
    path.write_text("name: t\ndataset: {kind: synthetic}\ndetector: {name: retinanet}\n" + tail)
    with pytest.raises(StudyError) as info:
        load_study(str(path))
    return info.value, path


def test_unknown_key_in_a_phase_lists_the_phase_keys(tmp_path):
    error, _ = _load_error(tmp_path, "train: {phases: [{name: a, epochs: 1, lrr: 0.1}]}\n")
    assert error.path == "train.phases[0].lrr"
    assert error.message.startswith("unknown key; did you mean 'lr'? (known: name, epochs, trainable, frozen,")


def test_set_key_walks_one_dotted_key_into_the_raw_dict():
    study = validate(RAW)
    raw = study.model_dump()
    set_key(raw, "loss.name", "ce")  # a new loss starts from empty params: focal's alpha means nothing to ce
    assert raw["loss"] == {"name": "ce", "params": {}}
    set_key(raw, "losses.box.params.beta", 0.5)  # a role left to its default gets the default first
    assert raw["losses"]["box"] == {"name": "smooth_l1", "params": {"beta": 0.5}}
    raw = study.model_dump()
    set_key(raw, "losses.box.name", "l1")  # ... and a new name for it drops the default's beta
    assert raw["losses"]["box"] == {"name": "l1", "params": {}}
    with pytest.raises(ConfigError) as info:
        set_key(raw, "name", "x")
    assert info.value.msg == ("cannot sweep 'name': only keys under dataset, detector, loss, losses, train, eval "
                              "can vary")
    with pytest.raises(ConfigError) as info:
        set_key(raw, "train.lr.x", 1)
    assert (info.value.loc, info.value.msg) == (("train", "lr"), "no such section")


def test_sweeping_the_name_of_a_defaulted_loss_role(tmp_path):
    """Was 'unknown parameter of box loss 'l1'': the default smooth_l1's beta stayed with l1."""
    path = tmp_path / "s.yaml"
    path.write_text(f"name: t\ndataset: {{kind: synthetic}}\ndetector: {{name: retinanet}}\n"
                    f"output: {{runs_dir: {tmp_path}/runs}}\nsweep: {{grid: {{losses.box.name: [l1, smooth_l1]}}}}\n")
    trials = expand(load_study(str(path)))
    assert [t["losses"]["box"] for t in trials] == [{"name": "l1", "params": {}},
                                                    {"name": "smooth_l1", "params": {"beta": 1 / 9}}]


def test_a_swept_list_is_named_by_its_choices(tmp_path):
    error, path = _load_error(tmp_path, "sweep: {grid: {losses.box.name: l1}}\n")
    assert str(error) == f"{path}: sweep.grid.losses.box.name: expected a list of values among 'l1', " \
                              "'smooth_l1', got 'l1'"
