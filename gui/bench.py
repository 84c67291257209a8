"""`xvfb-run -a python -m gui.bench`: how fast the browser feels, in milliseconds.

Measures, on a real predictions file (default: the latest run): start-up to the first page
fully drawn, and event-to-page-drawn times for paging on (the neighbours are prefetched, so
cached), jumping to a far rank (uncached), revisiting pages (cached) and switching class.
Then times the pure ranking model on a synthetic 5,823-image file (the full VOC val size).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import statistics  # noqa: E402

from vocdata.options import add_runs_dir_option, add_voc_root_option  # noqa: E402


def _summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<34} (none)"
    return (
        f"{name:<34} n={len(values):>3}  median {statistics.median(values):7.1f} ms  "
        f"max {max(values):7.1f} ms"
    )


def _model_timings(num_images: int = 5823, repeats: int = 20) -> list[str]:
    import numpy as np

    from gui.model import RankingModel
    from predictions import Predictions
    from vocdata import NUM_CLASSES, VOC_CLASSES

    rng = np.random.default_rng(0)
    labels = np.where(rng.random((num_images, NUM_CLASSES)) < 0.07, 1, -1).astype(np.int8)
    scores = rng.random((num_images, NUM_CLASSES), dtype=np.float32)
    files = tuple(f"JPEGImages/{i:06d}.jpg" for i in range(num_images))
    predictions = Predictions(scores, labels, files, VOC_CLASSES, {"difficult": "ignore"})
    started = time.perf_counter()
    model = RankingModel(predictions)
    build = (time.perf_counter() - started) * 1000
    switch = []
    for c in range(repeats):
        started = time.perf_counter()
        model.set_class(c % NUM_CLASSES)
        model.page_items()
        model.precision_line()
        switch.append((time.perf_counter() - started) * 1000)
    return [
        f"ranking model on {num_images:,} images: built in {build:.1f} ms "
        f"(AP of {NUM_CLASSES} classes)",
        _summary("class switch + page + precision", switch),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gui.bench", description=__doc__)
    parser.add_argument("--predictions", default=None, help="default: the latest run")
    add_runs_dir_option(parser)
    add_voc_root_option(parser, of_run=True)
    parser.add_argument("--pages", type=int, default=10, help="pages per measurement")
    args = parser.parse_args(argv)

    from gui.launch import LaunchError, launch
    from gui.options import build_parser

    gui_args = build_parser().parse_args(
        ["--runs-dir", args.runs_dir]
        + (["--predictions", args.predictions] if args.predictions else [])
        + (["--voc-root", args.voc_root] if args.voc_root else [])
    )
    try:
        app = launch(gui_args, started=STARTED)
    except LaunchError as error:
        return error.report()
    try:
        app.pump()
        model = app.model
        rng = __import__("random").Random(0)
        results: dict[str, list[float]] = {}

        def measure(name: str, event: str, value=None) -> None:
            before = len(app.timings)
            app.send(event, value)
            for timing in app.timings[before:]:
                key = f"{name} ({'cached' if timing.cached else 'decoded'})"
                results.setdefault(key, []).append(timing.milliseconds)

        for class_name in ("dog", "cat", "person"):
            label = model.class_labels()[model.predictions.class_index(class_name)]
            app.window["-CLASS-"].update(value=label)
            measure("switch class", "-CLASS-", label)
            for _ in range(args.pages):
                time.sleep(0.3)  # a person looks at the page; prefetching happens meanwhile
                measure("next page", "-NEXT-")
        visited = []
        for _ in range(args.pages):
            rank = rng.randrange(1, model.num_images + 1)
            app.window["-RANK-"].update(str(rank))
            measure("jump to a far rank", "-GO-")
            visited.append(rank)
        for rank in visited:
            app.window["-RANK-"].update(str(rank))
            measure("revisit a page", "-GO-")
    finally:
        app.close()
    print(f"images: {model.num_images:,}; page: {model.page_size} thumbnails")
    print(
        f"start-up to first page drawn: {app.startup_seconds * 1000:.0f} ms "
        f"(from interpreter start of this script, imports included)"
    )
    for name in sorted(results):
        print(_summary(name, results[name]))
    for line in _model_timings():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
