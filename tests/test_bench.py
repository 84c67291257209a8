"""`python -m training.bench` times the trainer's own code: its loop, with phase timing on."""

from __future__ import annotations

import torch

from training import bench
from training.config import TrainConfig
from training.loop import StepTimes, train_one_epoch
from training.model import build_classifier
from training.optim import build_optimizer, build_scheduler
from training.runtime import Runtime


def _batches(count: int = 3, size: int = 4) -> list[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=generator),
            (torch.rand(size, 20, generator=generator) > 0.8).float(),
            torch.ones(size, 20),
            torch.arange(size),
        )
        for _ in range(count)
    ]


def _train_once(step_times: StepTimes | None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_classifier("resnet18", 20, weights="none")
    config = TrainConfig(epochs=1, warmup_epochs=0.5)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, 3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    runtime = Runtime(torch.device("cpu"))
    train_one_epoch(
        model, _batches(), optimizer, scheduler, scaler, runtime, False, step_times=step_times
    )
    return model.state_dict()


def test_timing_the_phases_does_not_change_what_the_loop_computes():
    step_times = StepTimes()
    timed, plain = _train_once(step_times), _train_once(None)
    for name, tensor in plain.items():
        assert torch.equal(tensor, timed[name]), name
    assert step_times.steps == 3
    per_step = step_times.milliseconds_per_step()
    assert set(per_step) == {"data wait", "forward+backward", "optimizer"}
    assert all(value >= 0 for value in per_step.values())


def test_bench_measures_our_pipeline_on_the_fixture(tiny_voc, tmp_path, capsys):
    code = bench.main(
        [
            *("--voc-root", str(tiny_voc.root), "--device", "cpu", "--image-size", "32"),
            *("--batches", "1", "--warmup", "0", "--workers", "0", "--skip-baseline"),
            *("--cache-dir", str(tmp_path / "cache")),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "(b) ours, batch 16" in out and "(b) ours, batch 32" in out
    for phase in ("data wait", "forward+backward", "optimizer", "validation pass (s)"):
        assert phase in out


def test_engine_rows_side_by_side_agree_with_eager(tiny_voc, capsys):
    code = bench.main(
        [
            *("--engines", "--voc-root", str(tiny_voc.root), "--device", "cpu"),
            *("--image-size", "32", "--batches", "1", "--engine-batch-size", "2"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for arch in ("resnet18 (none weights, real val images", "efficientnet_lite0 (imagenet"):
        assert arch in out
    rows = [line for line in out.splitlines() if line.startswith(("torch eager", "onnx", "open"))]
    assert len(rows) == 2 * 5
    for row in rows:
        if "default precision" not in row and "NCHW" not in row:  # f32: the same logits
            assert float(row.split()[-1]) <= 1e-4, row
    assert out.count("fine-tuning step, channels-last") == 2
