"""The folder of a trained system (``l2d.serving.trained_system``): names, weights, scores and
routing."""

import json

import jax.numpy as jnp
import numpy as np
from conftest import raises_one_line
from flax import nnx

from l2d.config import DataOptions, TrainConfig
from l2d.evaluation.evaluate import decide_on_images
from l2d.serving.trained_system import TrainedSystem, padded_size, save_system
from l2d.train_state import method_of

SHAPE = (4, 4, 1)


def tiny_config(tmp_path, **changes) -> TrainConfig:
    groundtruth = tmp_path / "train_groundtruth.json"
    return TrainConfig.from_dict(dict(
        train_files=("experts/alice.json", "experts/bob.json"),
        train_groundtruth_file=str(groundtruth), num_classes=3, image_shape=SHAPE,
        clf_width=2, dfr_model="cnn", dfr_width=2, norm_mean=(0.5,), norm_std=(0.25,),
        **changes))


def saved(tmp_path, config):
    method = method_of(config)
    model = method.create_model(nnx.Rngs(params=0))
    save_system(tmp_path / "system", config, nnx.state(model))
    return method, model, TrainedSystem(tmp_path / "system")


def test_expert_names_are_the_manifest_names_made_unique_unless_named():
    def names(files, given=None):
        return DataOptions(train_files=tuple(files), expert_names=given).experts()

    assert names(["a/alice.json", "b/bob.json"]) == ["alice", "bob"]
    assert names(["a/x.json", "b/x.json"]) == ["0:x", "1:x"]
    assert names(["classifier.json"]) == ["0:classifier"]
    assert names(["a/x.json", "b/x.json"], ("ann", "bo")) == ["ann", "bo"]


def test_batches_are_padded_to_powers_of_two():
    assert [padded_size(n) for n in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 32]


def test_a_saved_system_scores_as_its_model_and_names_its_options(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps(["cat", "dog", "fox"]))
    config = tiny_config(tmp_path)
    method, model, system = saved(tmp_path, config)
    assert system.options == ["alice", "bob", "classifier"]
    assert system.classes == ["cat", "dog", "fox"]
    images = np.random.default_rng(0).integers(0, 256, (5, *SHAPE), dtype=np.uint8)
    scores, classes = system.score(images)
    model.eval()
    direct = decide_on_images(model, method, jnp.asarray(images), jnp.asarray([0.5]),
                              jnp.asarray([0.25]))
    np.testing.assert_allclose(scores, direct["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(classes, direct["class_prediction"])
    rows = system.rows(system.route(scores, classes))
    chosen = np.argmax(scores, axis=1)
    assert rows["decision"] == [system.options[c] for c in chosen]
    assert rows["label"] == [["cat", "dog", "fox"][y] if c == 2 else ""
                             for c, y in zip(chosen, classes)]


def test_weights_of_other_networks_and_missing_bounds_are_one_line_errors(tmp_path):
    config = tiny_config(tmp_path)
    _, _, system = saved(tmp_path, config)
    raises_one_line(lambda: system.route(np.zeros((2, 3), np.float32), np.zeros(2, np.int32),
                                         workload="enforce"),
                    "trained without --max-share or --min-share")
    raises_one_line(lambda: system.check_images(np.zeros((1, 4, 4, 1), np.float32)),
                    "an array of float32 and shape (1, 4, 4, 1)", "expected uint8 images")
    wider = config.replace(clf_width=3)
    (tmp_path / "system" / "config.json").write_text(json.dumps(wider.to_dict()))
    raises_one_line(lambda: TrainedSystem(tmp_path / "system"), "weights.npz",
                    "weights do not fit the model of config.json", "of shape")


def test_enforce_bounds_the_shares_of_a_batch(tmp_path):
    config = tiny_config(tmp_path, test_workload="enforce", max_share=(0.2, 0.2, 1.0))
    _, _, system = saved(tmp_path, config)
    # Every image prefers expert 0: at most ceil(0.2 * 10) = 2 may go there.
    scores = np.tile(np.array([[5.0, 0.0, 1.0]], np.float32), (10, 1))
    routing = system.route(scores, np.zeros(10, np.int32))
    assert np.bincount(routing.chosen, minlength=3).tolist() == [2, 0, 8]
    assert (system.route(scores, np.zeros(10, np.int32), workload="argmax").chosen == 0).all()
