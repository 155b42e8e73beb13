"""``l2d train --test``: evaluate a run's checkpoint in use (the one ``--select-by`` selected,
else the latest) on test manifests (those it was trained with, or others of the same experts),
at the operating point's offset recorded with it, without training, and log the result to the
run as ``test/<manifest>_epoch_E[_step_S].json``, its status left as it is."""

import sys
from pathlib import Path

from l2d.annotations import MISSING
from l2d.config import TrainConfig
from l2d.data.dataset import load_test_split
from l2d.errors import L2DError
from l2d.evaluation.calibration import calibration_report
from l2d.evaluation.evaluate import check_test_workload, evaluate_split, make_predict_step
from l2d.evaluation.metrics import AUC, deferral_table, missing_annotations, summarise
from l2d.parallel import data_parallel
from l2d.preprocess import channel_statistics
from l2d.run_folder import RunFolder
from l2d.tracking import MlflowTracker, check_reachable, resolve_tracking_uri
from l2d.train_state import method_of


def missing_counts(split_name: str, split) -> dict[str, float]:
    """How many inputs of ``split`` each expert did not annotate, as metrics."""
    missing = (split.expert_labels == MISSING).sum(0)
    return {missing_annotations(split_name, k): float(n) for k, n in enumerate(missing)}


def evaluate_stored_run(config: TrainConfig, run_id: str) -> dict[str, float]:
    """Evaluate the checkpoint in use of ``run_id`` (whose stored configuration, with the test
    flags given, is ``config``) on its test manifests; return the metrics."""
    config.validate()
    uri = resolve_tracking_uri(config.tracking.tracking_uri)
    check_reachable(uri)
    tracker = MlflowTracker(uri)
    if not tracker.run_exists(run_id):
        raise L2DError(f"--run-id={run_id}: no such run in {tracker.uri}")
    data = config.data
    if data.image_shape is None or data.num_classes is None:
        raise L2DError(f"--run-id={run_id}: this configuration records no classes and image "
                       "shape, so it is not a run's stored one; evaluate with the run's own "
                       "(RunFolder.of(artifact_path, run_id).load_config())")
    test_split, test_images = load_test_split(
        data, config.runtime, data.num_classes,
        allow_missing=config.method_options.allow_missing_annotations)
    check_test_workload(config.evaluation, test_split)
    if test_images.shape != data.image_shape:
        raise L2DError(f"{test_split.groundtruth_path}: images are {test_images.shape} (HxWxC), "
                       f"the run was trained on {data.image_shape}")
    parallel = data_parallel()
    parallel.check_batch_size(config.training.batch_size)
    method = method_of(config)
    graphdef, restored = RunFolder.of(config.tracking.artifact_path, run_id).restore_in_use(
        config, method, parallel)
    offset = float(restored.extra.get("offset", 0.0))
    mean, std = channel_statistics(data.norm_mean, data.norm_std)
    predict_step = make_predict_step(graphdef, method=method, channel_mean=mean, channel_std=std,
                                     replicated=parallel.replicated)
    evaluation = evaluate_split(predict_step, restored.state, test_split, test_images,
                                num_classes=data.num_classes,
                                batch_size=config.training.batch_size, runtime=config.runtime,
                                evaluation=config.evaluation, parallel=parallel, offset=offset)
    metrics = {**summarise(evaluation.counts), AUC: evaluation.curve.area()}
    if config.method_options.allow_missing_annotations:
        metrics.update(missing_counts("test", test_split))
    position = restored.position
    result = {"checkpoint_epoch": position.epoch, "checkpoint_step": position.step,
              "test_groundtruth_file": data.test_groundtruth_file,
              "test_files": list(data.test_files),
              "test_workload": config.evaluation.test_workload,
              "operating_point": config.selection.operating_point,
              "classifier_offset": offset,
              "metrics": metrics,
              "deferral_table": deferral_table(evaluation.counts, data.options()),
              "accuracy_coverage": evaluation.curve.to_json(),
              "calibration": calibration_report(evaluation.counts),
              # Per ground-truth entry, in manifest order: the option chosen (the experts in
              # --test-files order, then the classifier).
              "routed_to": evaluation.chosen.tolist()}
    name = Path(data.test_groundtruth_file).stem
    at = f"epoch_{position.epoch}" + (f"_step_{position.step}" if position.step else "")
    tracker.log_dict_to(run_id, result, f"test/{name}_{at}.json")
    print(f"l2d: the checkpoint {position.describe()} of run {run_id} on "
          f"{data.test_groundtruth_file}:", file=sys.stderr)
    return metrics
