"""Check at training time: fine-tune the converted networks on VOC with the trainer's own
recipe and loop, beside the unconverted baseline, all from the same pretrained weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from training import TrainConfig, run
from wsconv.convert import model_hooks, variant_name

VARIANTS = ("baseline", "A", "B")
MIN_EPOCHS = 3
WORKING_MODE = "A"  # the mode that survives training; see explanation() and the README


def train_variant(base: TrainConfig, variant: str, runs_dir: Path) -> Path:
    """One training run of `variant` ('baseline', 'A' or 'B'); returns its run folder."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    config = dataclasses.replace(base, runs_dir=str(runs_dir), run_name=variant, resume=None)
    if variant == "baseline":
        return run(config)
    name = variant_name(variant)
    return run(config, model_hook=model_hooks()[name], model_variant=name)


def map_per_epoch(run_dir: Path) -> list[float | None]:
    history = json.loads((run_dir / "history.json").read_text())
    return [record["val_map"] for record in history]


def explanation() -> str:
    """Why mode B breaks in training and mode A does not (also in the README)."""
    return (
        "In eval mode BatchNorm uses its running statistics, and both modes are exact. In "
        "train mode it normalises with the statistics of the current batch instead: for the "
        "input ẑ = z / n_c they are μ_B / n_c and σ_B² / n_c², so the normalised value "
        "(ẑ − μ_B/n_c) / sqrt(σ_B²/n_c² + ε) = (z − μ_B) / sqrt(σ_B² + ε n_c²) has lost the "
        "1/n_c: it is (up to ε) what the original network computed. Mode A left α and β "
        "untouched, so in training it computes what the original computes, and the running "
        "statistics it keeps updating are those of ẑ, the scale its adjusted μ̂, σ̂² were "
        "already on: it trains like the baseline. Mode B put the correction into the affine "
        "parameters, α̂ = α n_c and β̂ = β + α μ (n_c − 1)/sqrt(σ² + ε), which only cancel the "
        "1/n_c when the running statistics are used. In training, every channel's output is "
        "α n_c (z − μ_B)/σ_B + β̂: scaled by n_c (the weight std, about 0.01–0.1 in pretrained "
        "convolutions, so 10–100 times too small) and shifted. The pretrained features are "
        "gone from the first step, and the running statistics drift to ẑ's scale while α̂, β̂ "
        "still assume z's, so evaluation after training is off as well: mode B breaks."
    )
