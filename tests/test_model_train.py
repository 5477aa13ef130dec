"""Training: a real (tiny) run on annotated DICOM, resume to the same weights, time limit, bundle."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from model_factory import SEGMENT_MAP, TINY_NET, write_mr_with_seg

from backmice_vision.errors import ConfigError
from backmice_vision.labels import MODEL_CLASSES
from backmice_vision.model.bundle import CARD, load_bundle
from backmice_vision.model.train import recompute_batchnorm, segmentation_loss, train


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model_train")
    write_mr_with_seg(root / "train" / "a", seed=0)
    write_mr_with_seg(root / "train" / "b", seed=1)
    write_mr_with_seg(root / "val", seed=2)
    return root


def config(data: Path, work: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "tiny_mr",
        "modality": "MR",
        "seed": 3,
        "num_threads": 1,
        "work_dir": str(work / "run"),
        "cache_dir": str(data / "cache"),
        "out": str(work / "bundle"),
        "network": copy.deepcopy(TINY_NET),
        "calibrate": False,
        "data": {
            "train": [{"type": "dicom_seg", "path": str(data / "train"), "segment_map": SEGMENT_MAP}],
            "val": [{"type": "dicom_seg", "path": str(data / "val"), "segment_map": SEGMENT_MAP}],
        },
        "augment": {"patch": [48, 48], "samples_per_image": 2},
        "optim": {"lr": 0.01, "batch_size": 4, "epochs": 3, "steps_per_epoch": 4},
    }
    cfg.update(over)
    return cfg


def quiet(msg: str) -> None:
    pass


def test_train_learns_and_writes_a_bundle(data: Path, tmp_path: Path) -> None:
    release = {"0.2.0": "fine-tuned", "0.1.0": "first"}
    cfg = config(
        data, tmp_path, postprocessing={"nodule_grow_threshold": 0.3}, version="0.2.0", changelog=release
    )
    out = train(cfg, device="cpu", log=quiet)
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    b = load_bundle(out)
    assert b.metadata["training"]["epochs_run"] == 3
    assert b.postprocessing == {"nodule_grow_threshold": 0.3}
    assert b.metadata["metrics"]["validation"]["mean_dice"] == max(h["mean_dice"] for h in history)
    assert "Dice" in (out / CARD).read_text()
    assert b.version == "0.2.0" and b.metadata["changelog"] == release
    assert (out / CARD).read_text().startswith("# tiny_mr 0.2.0:")


def test_precise_batchnorm_statistics_are_the_average_over_fixed_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 2, 8, 8, generator=gen) * (k + 1) + k for k in range(3)]
    results = []
    for before in (0.0, 50.0):  # whatever the training batches left in the running statistics
        net = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2))
        torch.nn.init.eye_(net[0].weight[:, :, 0, 0])
        torch.nn.init.zeros_(net[0].bias)
        net[1].running_mean.fill_(before)
        net.eval()
        recompute_batchnorm(net, batches, "cpu")
        assert not net.training and net[1].momentum == pytest.approx(0.1)
        assert int(net[1].num_batches_tracked) == 3
        results.append(net[1].running_mean.clone())
    # the identity convolution passes the input through: each channel's mean over the three batches
    expected = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(dim=0)
    assert torch.allclose(results[0], expected, atol=1e-5) and torch.allclose(results[1], expected, atol=1e-5)


def test_training_with_precise_batchnorm_ships_the_recomputed_statistics(data: Path, tmp_path: Path) -> None:
    net = copy.deepcopy(TINY_NET)
    net["kwargs"]["norm"] = "batch"
    optim = {"lr": 0.01, "batch_size": 4, "epochs": 2, "steps_per_epoch": 4, "precise_bn_batches": 3}
    out = train(config(data, tmp_path, network=net, optim=optim), device="cpu", log=quiet)
    state = load_bundle(out).network.state_dict()
    counts = {k: int(v) for k, v in state.items() if "num_batches_tracked" in k}
    assert counts and set(counts.values()) == {3}  # 3 fixed batches, not the 8 training steps
    with pytest.raises(ConfigError, match=r"optim\.precise_bn_batches must be a positive integer"):
        train(config(data, tmp_path, optim={**optim, "precise_bn_batches": 0}), device="cpu", log=quiet)


def test_bundle_from_checkpoint_takes_the_last_epoch_and_refuses_what_does_not_fit(
    data: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    out = train(
        config(data, tmp_path, optim={"lr": 0.01, "batch_size": 4, "epochs": 2, "steps_per_epoch": 2}),
        device="cpu",
        log=quiet,
    )
    script = Path(__file__).resolve().parents[1] / "scripts" / "bundle_from_checkpoint.py"

    def run(checkpoint: Path, target: Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(script), str(checkpoint), str(out), str(target)]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    last = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert run(tmp_path / "run" / "last.pt", tmp_path / "last_bundle").returncode == 0
    rebuilt = load_bundle(tmp_path / "last_bundle")  # sha256 checked on loading
    assert all(torch.equal(v, last["model"][k]) for k, v in rebuilt.network.state_dict().items())
    assert rebuilt.metadata["calibration"] == load_bundle(out).metadata["calibration"]
    for bad in (tmp_path / "missing.pt", out / "configs" / "metadata.json"):
        failed = run(bad, tmp_path / "never")
        assert failed.returncode == 2 and "Traceback" not in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1 and str(bad) in failed.stderr
    assert not (tmp_path / "never").exists()

    # a weight average: the element-wise mean of float tensors, integer buffers from the first checkpoint
    averager = script.with_name("average_checkpoints.py")
    shifted = {k: v + 1.0 if v.is_floating_point() else v + 7 for k, v in last["model"].items()}
    torch.save({"model": shifted}, tmp_path / "shifted.pt")
    checkpoints = [str(tmp_path / "run" / "last.pt"), str(tmp_path / "shifted.pt")]
    cmd = [sys.executable, str(averager), str(out), str(tmp_path / "mean"), *checkpoints]
    assert subprocess.run(cmd, capture_output=True, text=True, check=False).returncode == 0
    mean = load_bundle(tmp_path / "mean").network.state_dict()
    for key, value in last["model"].items():
        expected = value + 0.5 if value.is_floating_point() else value
        torch.testing.assert_close(mean[key], expected)
    cmd = [
        sys.executable,
        str(averager),
        str(out),
        str(tmp_path / "never"),
        checkpoints[0],
        str(out / "README"),
    ]
    failed = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert (
        failed.returncode == 2 and "Traceback" not in failed.stderr and str(out / "README") in failed.stderr
    )
    assert not (tmp_path / "never").exists()


def test_float16_weights_halve_the_bundle_and_load_into_float32(data: Path, tmp_path: Path) -> None:
    net = copy.deepcopy(TINY_NET)
    net["kwargs"]["norm"] = "batch"  # running statistics: buffers that stay float32
    full = load_bundle(train(config(data, tmp_path / "f32", network=net), device="cpu", log=quiet))
    f16 = config(data, tmp_path / "f16", network=net, weights_dtype="float16")
    half_dir = train(f16, device="cpu", log=quiet)
    stored = torch.load(half_dir / "models" / "model.pt", weights_only=True)
    params = {name for name, _ in load_bundle(half_dir).network.named_parameters()}
    dtypes = {k: v.dtype for k, v in stored.items() if v.is_floating_point()}
    assert {dtypes[k] for k in params} == {torch.float16}
    assert {d for k, d in dtypes.items() if k not in params} == {torch.float32}  # batch-norm statistics
    full_stored = torch.load(full.path / "models" / "model.pt", weights_only=True)

    def payload(state: dict[str, torch.Tensor]) -> int:
        return sum(v.numel() * v.element_size() for v in state.values())

    assert payload(stored) < 0.52 * payload(full_stored)
    half = load_bundle(half_dir)
    for (name, p16), p32 in zip(
        half.network.state_dict().items(), full.network.state_dict().values(), strict=True
    ):
        if p32.is_floating_point():  # the same run (same seed), rounded to half precision
            assert p16.dtype == torch.float32, name
            expected = p32.half().float() if name in params else p32
            torch.testing.assert_close(p16, expected, rtol=0, atol=0)
    assert "float16" in (half_dir / CARD).read_text()
    with pytest.raises(ConfigError, match="weights_dtype must be float32 or float16"):
        train(config(data, tmp_path, weights_dtype="int8"), device="cpu", log=quiet)


def test_bfloat16_training_learns_and_differs_from_float32(data: Path, tmp_path: Path) -> None:
    optim = {"lr": 0.01, "batch_size": 4, "epochs": 3, "steps_per_epoch": 4}
    lines: list[str] = []
    low = train(
        config(data, tmp_path / "bf16", optim={**optim, "precision": "bfloat16"}),
        device="cpu",
        log=lines.append,
    )
    full = train(config(data, tmp_path / "fp32", optim=optim), device="cpu", log=quiet)
    history = [
        json.loads(line) for line in (tmp_path / "bf16" / "run" / "history.jsonl").read_text().splitlines()
    ]
    assert history[-1]["loss"] < history[0]["loss"]
    assert any(line.endswith("patches in bfloat16") for line in lines)
    b_low, b_full = load_bundle(low), load_bundle(full)
    assert b_low.metadata["training"]["config"]["optim"]["precision"] == "bfloat16"
    assert b_full.metadata["training"]["config"]["optim"]["precision"] == "float32"
    # the same seed and batches: only the forward pass's precision differs, and so do the weights
    w_low, w_full = b_low.network.state_dict(), b_full.network.state_dict()
    assert all(w_low[k].dtype == torch.float32 for k in w_low if w_low[k].is_floating_point())
    assert any(not torch.equal(w_low[k], w_full[k]) for k in w_full if w_full[k].is_floating_point())
    with pytest.raises(ConfigError, match=r"optim\.precision must be float32 or bfloat16"):
        train(config(data, tmp_path / "x", optim={**optim, "precision": "float8"}), device="cpu", log=quiet)


def test_resume_continues_to_the_same_weights(data: Path, tmp_path: Path) -> None:
    train(config(data, tmp_path / "a"), device="cpu", log=quiet)

    def crash_after_epoch_2(msg: str) -> None:
        if msg.startswith("epoch 2/3"):
            raise Interrupted

    cfg_b = config(data, tmp_path / "b")
    with pytest.raises(Interrupted):
        train(cfg_b, device="cpu", log=crash_after_epoch_2)
    assert torch.load(tmp_path / "b" / "run" / "last.pt", weights_only=False)["epoch"] == 2
    lines: list[str] = []
    train(cfg_b, resume=True, device="cpu", log=lines.append)
    assert any(line.startswith("resumed from epoch 2") for line in lines)
    a = torch.load(tmp_path / "a" / "run" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "run" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6)
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], rel=1e-5)


def test_weight_average_is_validated_shipped_and_resumed(data: Path, tmp_path: Path) -> None:
    ema = {"optim": {"lr": 0.01, "batch_size": 4, "epochs": 3, "steps_per_epoch": 4, "ema_decay": 0.5}}
    out = train(config(data, tmp_path / "a", **ema), device="cpu", log=quiet)
    a = torch.load(tmp_path / "a" / "run" / "last.pt", weights_only=False)
    assert any(
        not torch.equal(a["ema"][k], a["model"][k]) for k in a["model"] if a["model"][k].is_floating_point()
    )
    best = torch.load(tmp_path / "a" / "run" / "best.pt", weights_only=False)
    shipped = load_bundle(out).network.state_dict()
    for key, value in best["model"].items():  # the bundle holds the chosen average, not the raw weights
        torch.testing.assert_close(shipped[key], value, rtol=0, atol=0)
    assert "exponential moving average (decay 0.5" in (out / CARD).read_text()

    def crash_after_epoch_2(msg: str) -> None:
        if msg.startswith("epoch 2/3"):
            raise Interrupted

    cfg_b = config(data, tmp_path / "b", **copy.deepcopy(ema))
    with pytest.raises(Interrupted):
        train(cfg_b, device="cpu", log=crash_after_epoch_2)
    train(cfg_b, resume=True, device="cpu", log=quiet)
    b = torch.load(tmp_path / "b" / "run" / "last.pt", weights_only=False)
    for key, value in a["ema"].items():
        torch.testing.assert_close(b["ema"][key], value, rtol=1e-5, atol=1e-6)

    # a decay near 0 keeps nothing of the past: the average is the last step's weights
    near_zero = {"optim": {**ema["optim"], "ema_decay": 1e-12}}
    train(config(data, tmp_path / "c", **near_zero), device="cpu", log=quiet)
    c = torch.load(tmp_path / "c" / "run" / "last.pt", weights_only=False)
    for key, value in c["model"].items():
        torch.testing.assert_close(c["ema"][key], value, rtol=1e-6, atol=1e-7)
    with pytest.raises(ConfigError, match="ema_decay must be a number between 0 and 1"):
        train(config(data, tmp_path / "d", optim={**ema["optim"], "ema_decay": 1.0}), device="cpu", log=quiet)


def test_time_limit_stops_and_still_writes_the_bundle(data: Path, tmp_path: Path) -> None:
    out = train(config(data, tmp_path, max_minutes=1e-6), device="cpu", log=quiet)
    training = load_bundle(out).metadata["training"]
    assert training["stopped_by_time_limit"] and training["epochs_run"] == 1
    assert training["history"][0]["steps"] == 1


def test_validation_can_add_a_fixed_set_of_domain_randomised_images(data: Path, tmp_path: Path) -> None:
    synthetic = {"type": "synthetic", "subjects": 2, "pool": 3, "seed": 5, "samples": 3}
    cfg = config(data, tmp_path, max_minutes=1e-6)
    cfg["data"]["val"].append(synthetic)
    messages: list[str] = []
    train(cfg, device="cpu", log=messages.append)
    plain: list[str] = []
    train(config(data, tmp_path / "plain", max_minutes=1e-6), device="cpu", log=plain.append)

    def tiles(log: list[str]) -> int:
        line = next(m for m in log if "validation tiles" in m)
        return int(line.split(" validation tiles")[0].rsplit(" ", 1)[1])

    assert tiles(messages) == tiles(plain) + 3
    from backmice_vision.model.inference import DEFAULT_MR
    from backmice_vision.model.synthetic import SyntheticSource

    first = SyntheticSource.from_config(synthetic, DEFAULT_MR).fixed_samples(3)
    again = SyntheticSource.from_config(synthetic, DEFAULT_MR).fixed_samples(3)
    for a, b in zip(first, again, strict=True):  # the same images in every run
        torch.testing.assert_close(torch.from_numpy(a["image"]), torch.from_numpy(b["image"]), rtol=0, atol=0)
    cfg["data"]["val"] = [synthetic]
    with pytest.raises(ConfigError, match=r"data\.val needs annotated sources"):
        train(cfg, device="cpu", log=quiet)


def _half_and_grown(cls: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels with a 4x4 block of ``cls``; logits that find half of it, and all of it plus 8 pixels."""
    labels = torch.zeros(1, 1, 8, 8)
    labels[0, 0, 2:6, 2:6] = cls

    def logits(rows: slice, cols: slice) -> torch.Tensor:
        out = torch.full((1, len(MODEL_CLASSES), 8, 8), -10.0)
        out[0, 0] = 10.0
        out[0, 0, rows, cols], out[0, cls, rows, cols] = -10.0, 10.0
        return out

    return labels, logits(slice(2, 6), slice(2, 4)), logits(slice(2, 6), slice(1, 7))


def test_recall_weighted_losses_punish_a_miss_more_than_a_false_alarm_of_the_same_size() -> None:
    nodule = MODEL_CLASSES.index("nodule")
    labels, half, grown = _half_and_grown(nodule)  # 8 pixels missed against 8 pixels too many

    def miss_minus_false_alarm(**optim: Any) -> float:
        loss = segmentation_loss({"tversky_beta": None, "ce_class_weights": None, **optim})
        return float(loss(half, labels) - loss(grown, labels))

    # the overlap terms are means over the 4 foreground classes (the absent ones cost 0); the two
    # cross-entropies are equal (8 wrong pixels each). Dice: a miss of 8 of 16 pixels costs 1/3, 8 extra 1/5
    assert miss_minus_false_alarm() == pytest.approx((1 / 3 - 1 / 5) / 4, abs=1e-4)
    # Tversky with beta 0.7 (alpha 0.3): 1 - 8 / 13.6 against 1 - 16 / 18.4; beta 0.3 turns it round
    assert miss_minus_false_alarm(tversky_beta=0.7) == pytest.approx((16 / 18.4 - 8 / 13.6) / 4, abs=1e-4)
    assert miss_minus_false_alarm(tversky_beta=0.3) == pytest.approx((16 / 21.6 - 8 / 10.4) / 4, abs=1e-4)
    # a nodule weight of 4 in the cross-entropy: the 8 missed pixels weigh 4 each, the 8 extra ones 1
    weights = [1.0, 1.0, 1.0, 4.0, 1.0]
    weighted = miss_minus_false_alarm(ce_class_weights=weights) - miss_minus_false_alarm()
    assert weighted == pytest.approx((8 * 4 - 8) * 20.0 / (16 * 4 + 48), rel=1e-3)


def test_config_errors(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="modality must be one of MR, US"):
        train(config(data, tmp_path, modality="CT"), log=quiet)
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(config(data, tmp_path), resume=True, device="cpu", log=quiet)
    deep = config(data, tmp_path)
    deep["network"]["kwargs"].update(channels=[4, 4, 8, 8, 16, 16], strides=[2, 2, 2, 2, 2])  # factor 32
    with pytest.raises(ConfigError, match=r"multiple \(16\) must be a multiple of the network's"):
        train(deep, device="cpu", log=quiet)
    flat = config(data, tmp_path)
    flat["network"]["kwargs"]["in_channels"] = 1  # MR tiles carry the slice and its two neighbours
    with pytest.raises(ConfigError, match=r"in_channels \(1\) must be 3, the channels that preprocessing"):
        train(flat, device="cpu", log=quiet)
    with pytest.raises(ConfigError, match=r"optim\.tversky_beta must be a number between 0 and 1"):
        train(config(data, tmp_path, optim={"tversky_beta": 1.5}), device="cpu", log=quiet)
    with pytest.raises(ConfigError, match=r"optim\.ce_class_weights must list 5 positive numbers"):
        train(config(data, tmp_path, optim={"ce_class_weights": [1.0, 2.0]}), device="cpu", log=quiet)
    with pytest.raises(ConfigError, match="postprocessing: unknown threshold 'grow'"):
        train(config(data, tmp_path, postprocessing={"grow": 0.3}), device="cpu", log=quiet)
    with pytest.raises(ConfigError, match=r"changelog must map versions to text and include version 0\.3\.0"):
        train(config(data, tmp_path, version="0.3.0", changelog={"0.2.0": "x"}), device="cpu", log=quiet)
    mr_cal = config(data, tmp_path)
    mr_cal["data"]["val"].append({"type": "synthetic", "samples": 0, "calibration_samples": 5})
    with pytest.raises(ConfigError, match="calibration_samples is for ultrasound only"):
        train(mr_cal, device="cpu", log=quiet)
    bad = config(data, tmp_path)
    bad["data"]["train"][0]["segment_map"] = {"Lipoma": "tumour"}
    with pytest.raises(ConfigError, match="unknown class 'tumour'"):
        train(bad, device="cpu", log=quiet)


def test_a_stage_config_states_only_what_it_changes_over_its_base(tmp_path: Path) -> None:
    from backmice_vision.model.train import load_config

    repo = Path(__file__).resolve().parents[1] / "configs"
    stage3 = load_config(repo / "train_us_dr_large_scratch_stage3.yaml")
    scratch = load_config(repo / "train_us_dr_large_scratch.yaml")
    # two levels of bases: stage 3 over stage 2 over the scratch run
    assert stage3["optim"]["epochs"] == 20 and stage3["optim"]["lr"] == 0.0002
    assert stage3["optim"]["ema_decay"] == 0.998  # from stage 2
    assert stage3["optim"]["batch_size"] == scratch["optim"]["batch_size"] == 16  # from the scratch run
    assert stage3["network"] == scratch["network"] and stage3["augment"] == scratch["augment"]
    assert stage3["data"]["val"] == scratch["data"]["val"]
    assert stage3["data"]["train"][0]["seed"] == 112  # lists are replaced whole
    assert len(stage3["data"]["train"]) == len(scratch["data"]["train"])
    assert set(stage3["changelog"]) >= {"0.5.0", "0.6.0"} and "stage3" in stage3["changelog"]["0.6.0"]
    assert "base" not in stage3

    (tmp_path / "a.yaml").write_text("base: b.yaml\nmodality: US\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="config bases form a cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: absent.yaml\nmodality: US\n")
    with pytest.raises(ConfigError, match=r"absent\.yaml: training config not found"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\nmodality: US\n")
    with pytest.raises(ConfigError, match="base must be the path of another training config"):
        load_config(tmp_path / "d.yaml")


def test_fine_tuning_starts_from_a_bundle_and_refuses_a_mismatched_one(data: Path, tmp_path: Path) -> None:
    first = train(config(data, tmp_path / "a"), device="cpu", log=quiet)
    lines: list[str] = []
    one_step = {"lr": 1e-9, "batch_size": 4, "epochs": 1, "steps_per_epoch": 1}
    tuned = train(
        config(data, tmp_path / "b", init_from=str(first), optim=one_step), device="cpu", log=lines.append
    )
    assert any(line.startswith("initial weights from") for line in lines)
    start, end = load_bundle(first).network.state_dict(), load_bundle(tuned).network.state_dict()
    for key, value in start.items():  # a step of lr 1e-9 from the bundle's weights stays on them
        torch.testing.assert_close(end[key], value, rtol=1e-4, atol=1e-5)
    # inference zooms are not part of what the weights learnt: a config may add them, the card says so
    zoomed = config(data, tmp_path / "z", init_from=str(first), optim=one_step)
    zoomed["preprocessing"] = {"zooms": [1.0, 1.5]}
    lines.clear()
    with_zooms = load_bundle(train(zoomed, device="cpu", log=lines.append))
    assert "init_from: inference zooms [1.0, 1.5] (the bundle's: [1.0])" in lines
    assert with_zooms.preprocessing == replace(load_bundle(first).preprocessing, zooms=(1.0, 1.5))
    assert "- Inference zooms: 1, 1.5: class probabilities averaged" in (with_zooms.path / CARD).read_text()
    with pytest.raises(ConfigError, match=r"config: preprocessing zooms must be one or more numbers"):
        train(config(data, tmp_path / "f", preprocessing={"zooms": [9.0]}), device="cpu", log=quiet)
    # another pixel size is a transfer the fine-tuning adapts (logged); other preprocessing is not
    spacing = load_bundle(first).preprocessing.spacing_mm
    finer = config(
        data, tmp_path / "f", init_from=str(first), optim=one_step, preprocessing={"spacing_mm": 0.5}
    )
    lines.clear()
    assert load_bundle(train(finer, device="cpu", log=lines.append)).preprocessing.spacing_mm == 0.5
    assert f"init_from: model spacing 0.5 mm (the bundle's: {spacing} mm)" in lines
    clipped = config(data, tmp_path / "p", init_from=str(first), preprocessing={"percentiles": [5.0, 95.0]})
    with pytest.raises(ConfigError, match="preprocessing differs"):
        train(clipped, device="cpu", log=quiet)
    wider = config(data, tmp_path / "c", init_from=str(first))
    wider["network"]["kwargs"]["channels"] = [8, 16, 32]
    with pytest.raises(ConfigError, match="network differs"):
        train(wider, device="cpu", log=quiet)
    with pytest.raises(ConfigError, match="init_from"):
        train(config(data, tmp_path / "d", init_from=str(tmp_path / "nowhere")), device="cpu", log=quiet)


def test_calibration_reads_annotated_dicom_seg_validation_data(data: Path, tmp_path: Path) -> None:
    from backmice_vision.model.inference import DEFAULT_MR
    from backmice_vision.model.train import fit_detection_calibration

    bundle = load_bundle(train(config(data, tmp_path), device="cpu", log=quiet))
    val = config(data, tmp_path)["data"]["val"]
    _, report = fit_detection_calibration(bundle.network, DEFAULT_MR, val, torch.device("cpu"), quiet)
    # the one annotated validation series (a SEG with a nodule) is used, not skipped as "not a phantom"
    assert report["series_used"] == 1
    assert report["series"]["n"] == 1


def test_calibration_adds_domain_randomised_ultrasound_images() -> None:
    from backmice_vision.evaluation import truth_from_labels
    from backmice_vision.model.bundle import default_bundle_dir
    from backmice_vision.model.synthetic import SyntheticSource
    from backmice_vision.model.train import fit_detection_calibration

    bundle = load_bundle(default_bundle_dir("US"))
    prep = bundle.preprocessing
    entry = {
        "type": "synthetic",
        "subjects": 3,
        "pool": 6,
        "seed": 11,
        "samples": 0,
        "anatomy": {"no_nodule_prob": 0.0},
        "calibration_samples": 4,
    }
    source = SyntheticSource.from_config(entry, prep)
    cases = list(source.calibration_series(4))
    again = list(source.calibration_series(4))
    nodules = 0
    for (series, labels), (series_b, _) in zip(cases, again, strict=True):
        np.testing.assert_array_equal(series.pixels, series_b.pixels)  # drawn once from the seed
        (region,) = series.regions
        assert series.shape == labels.shape and region.spacing_mm == (prep.spacing_mm, prep.spacing_mm)
        for truth in truth_from_labels(series, labels):
            rows, cols = np.nonzero(labels[0] == MODEL_CLASSES.index("nodule"))
            extent_mm = prep.spacing_mm * (max(np.ptp(rows), np.ptp(cols)) + 1)
            assert 0.5 * extent_mm <= max(truth["diameters_mm"]) <= 1.5 * extent_mm
            nodules += 1
    assert nodules > 0
    _, report = fit_detection_calibration(bundle.network, prep, [entry], torch.device("cpu"), quiet)
    assert report["series_used"] == 4 and report["series"]["n"] == 4
    with pytest.raises(ConfigError, match="calibration_samples must be an integer"):
        SyntheticSource.from_config({**entry, "calibration_samples": -1}, prep)


def test_recalibrate_refits_a_bundle_on_new_data_and_keeps_its_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from backmice_vision.cli import main
    from backmice_vision.model.bundle import METADATA, WEIGHTS, default_bundle_dir
    from backmice_vision.model.train import fit_detection_calibration

    shipped = default_bundle_dir("US")
    entry = {"type": "synthetic", "subjects": 6, "pool": 12, "seed": 12, "samples": 0,
             "anatomy": {"no_nodule_prob": 0.3}, "calibration_samples": 10}  # fmt: skip
    cfg_path = tmp_path / "calibrate.yaml"
    cfg_path.write_text(yaml.safe_dump({"modality": "US", "data": {"val": [entry]}}))
    before = (shipped / METADATA).read_bytes()

    def calibrate(out: str, *more: str, model: Path = shipped) -> int:
        args = ["--model", str(model), "--config", str(cfg_path), "--out", str(tmp_path / out), *more]
        return main(["calibrate", *args])

    assert calibrate("m") == 0
    assert (shipped / METADATA).read_bytes() == before  # the source bundle is untouched

    new, old = load_bundle(tmp_path / "m"), load_bundle(shipped)
    assert (tmp_path / "m" / WEIGHTS).read_bytes() == (shipped / WEIGHTS).read_bytes()
    expected, report = fit_detection_calibration(
        old.network, old.preprocessing, [entry], torch.device("cpu"), quiet, postprocessing=old.postprocessing
    )
    assert expected and new.calibration == json.loads(json.dumps(expected))
    assert new.calibration != old.calibration
    assert new.metadata["metrics"]["calibration"]["series_used"] == report["series_used"] == 10
    assert new.metadata["metrics"]["validation"] == old.metadata["metrics"]["validation"]
    card = (tmp_path / "m" / CARD).read_text()
    assert "refitted by `backmice calibrate`" in card and card.count("- Calibration") == 1

    # other inference zooms than the shipped model's: fitted on the mean of those scales, written into the
    # bundle and its card
    assert old.preprocessing.zooms != (1.0, 1.5)
    assert calibrate("z", "--zooms", "1", "1.5") == 0
    zoomed = load_bundle(tmp_path / "z")
    assert zoomed.preprocessing.zooms == (1.0, 1.5) and zoomed.calibration != new.calibration
    assert calibrate("zz", model=tmp_path / "z") == 0  # a refit keeps the zooms and one card line
    assert load_bundle(tmp_path / "zz").preprocessing.zooms == (1.0, 1.5)
    card = (tmp_path / "zz" / CARD).read_text()
    assert card.count("- Inference zooms:") == 1
    assert (
        "- Inference zooms: 1, 1.5: class probabilities averaged over the series resampled to 0.4, 0.267"
        in card
    )

    # nothing to fit (two images without any nodule) and a config without data.val: one-line errors
    none = {**entry, "anatomy": {"no_nodule_prob": 1.0}, "calibration_samples": 2}
    cfg_path.write_text(yaml.safe_dump({"modality": "US", "data": {"val": [none]}}))
    assert calibrate("x") == 2
    assert not (tmp_path / "x").exists()
    assert "too few labelled detections" in capsys.readouterr().err
    cfg_path.write_text(yaml.safe_dump({"modality": "US", "data": {"train": [entry]}}))
    assert calibrate("x") == 2
    assert "needs a non-empty 'val' source list" in capsys.readouterr().err


def test_calibrate_chooses_the_post_processing_on_its_validation_data(tmp_path: Path) -> None:
    import yaml

    from backmice_vision.model.bundle import default_bundle_dir
    from backmice_vision.model.train import fit_detection_calibration, recalibrate

    shipped = load_bundle(default_bundle_dir("US"))
    entry = {"type": "synthetic", "subjects": 6, "pool": 12, "seed": 12, "samples": 0,
             "anatomy": {"no_nodule_prob": 0.3}, "calibration_samples": 10}  # fmt: skip
    # a 59 mm minimum diameter drops every nodule: the second candidate must win although listed later
    search = {"fp_per_image": 0.5, "candidates": [{"min_diameter_mm": 59.0}, {"min_diameter_mm": 4.0}]}
    cfg = {"modality": "US", "data": {"val": [entry]}, "postprocessing_search": search}
    out = recalibrate(default_bundle_dir("US"), cfg, tmp_path / "m", log=quiet)
    new = load_bundle(out)
    found = new.metadata["metrics"]["calibration"]["postprocessing_search"]
    assert found["chosen"] == {"min_diameter_mm": 4.0}
    first, second = (c["sensitivity"] for c in found["candidates"])
    assert first == 0.0 < second
    assert found["n_target_lesions"] > 0 and found["n_images"] == 10
    assert new.postprocessing == {**shipped.postprocessing, "min_diameter_mm": 4.0}
    # the calibration is the one fitted with the chosen post-processing alone
    alone, _ = fit_detection_calibration(
        shipped.network, shipped.preprocessing, [entry], torch.device("cpu"), quiet,
        postprocessing=new.postprocessing,
    )  # fmt: skip
    assert new.calibration == json.loads(json.dumps(alone))

    # the operating point: raised until the images without a nodule pass no false positive (0.01 per image)
    from backmice_vision.evaluation import truth_from_labels
    from backmice_vision.findings import load_thresholds
    from backmice_vision.model.detector import Detector
    from backmice_vision.model.synthetic import SyntheticSource

    cfg["postprocessing_search"] = {**search, "nodule_free_fp_per_image": 0.01}
    out = recalibrate(default_bundle_dir("US"), cfg, tmp_path / "o", log=quiet)
    strict = load_bundle(out)
    operating = strict.metadata["metrics"]["calibration"]["postprocessing_search"]["operating_point"]
    threshold = strict.postprocessing["confidence_threshold"]
    assert threshold == operating["confidence_threshold"] >= load_thresholds()["confidence_threshold"]
    assert operating["nodule_free_fp_per_image"] == 0.0
    assert strict.postprocessing["min_diameter_mm"] == 4.0
    detector = Detector(str(out), "cpu")
    assert detector.thresholds_for("US")["confidence_threshold"] == threshold
    source = SyntheticSource.from_config(entry, shipped.preprocessing)
    cases = source.calibration_series(10)
    free = [series for series, labels in cases if not truth_from_labels(series, labels)]
    assert len(free) == operating["nodule_free_images"] > 0
    assert all(not detector.detect(series).nodules for series in free)

    for bad, message in (
        ({"candidates": []}, "non-empty 'candidates'"),
        ({"candidates": [{"nodule_thresh": 0.3}]}, "nodule_thresh"),
        ({"candidates": [{}], "fp_per_image": 0}, "fp_per_image must be a positive number"),
        ({"candidates": [{}], "nodule_free_fp_per_image": -1}, "nodule_free_fp_per_image must be a positive"),
    ):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({**cfg, "postprocessing_search": bad}))
        with pytest.raises(ConfigError, match=message):
            recalibrate(default_bundle_dir("US"), tmp_path / "c.yaml", tmp_path / "x", log=quiet)
    assert not (tmp_path / "x").exists()


def test_operating_point_is_raised_until_images_without_nodules_pass_the_allowed_false_positives() -> None:
    from backmice_vision.evaluation import SeriesRecord
    from backmice_vision.findings import load_thresholds
    from backmice_vision.model.train import _operating_point

    def record(lesions: list[float | None], fps: list[float]) -> SeriesRecord:
        return SeriesRecord("US", "c", "f", len(fps), lesions, lesions, fps)

    records = [record([], [0.9, 0.37]), record([], [0.3]), record([0.8, None, 0.33], [0.95])]
    base = load_thresholds()  # confidence_threshold 0.25
    # 0.5 per image of the two without a nodule: one false positive passes, the next (0.37) must not
    point = _operating_point(records, None, 0.5, base)
    assert point["confidence_threshold"] == 0.38
    assert point["nodule_free_images"] == 2 and point["nodule_free_fp_per_image"] == 0.5
    assert point["sensitivity"] == pytest.approx(1 / 3) and point["sensitivity_at_base_threshold"] == 2 / 3
    assert _operating_point(records, None, 2.0, base)["confidence_threshold"] == 0.25  # never below the base
    # calibrated confidences: a Platt map that halves the logit moves the threshold with it
    platt = {"method": "platt", "input": "probability", "a": 0.5, "b": 0.0}
    assert _operating_point(records, platt, 0.5, base)["confidence_threshold"] == 0.44  # sigmoid(logit/2)


def test_phantom_sources_are_generated_whole_or_not_at_all(tmp_path: Path) -> None:
    from backmice_vision.model.train import _maybe_generate

    root = tmp_path / "us_train"
    source = {"type": "phantom", "path": str(root), "generate": {"cases": 1, "seed": 3, "workers": 1}}
    (tmp_path / "us_train.partial" / "case_0000").mkdir(parents=True)  # left by an interrupted run
    _maybe_generate([source], "US", quiet)
    assert (root / "case_0000" / "ground_truth.json").is_file()
    assert not (tmp_path / "us_train.partial").exists()
    stray = tmp_path / "mine"
    stray.mkdir()
    (stray / "notes.txt").write_text("a user's folder, not phantom cases")
    with pytest.raises(ConfigError, match="mine: holds no phantom cases"):
        _maybe_generate([{**source, "path": str(stray)}], "US", quiet)
    assert (stray / "notes.txt").is_file()
