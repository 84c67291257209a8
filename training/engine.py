"""Forward-only passes through an inference engine: PyTorch eager, ONNX Runtime or OpenVINO.

Every pass that only runs a network forward (the frozen-feature pass, validation, scoring)
can go through `build_engine`. The module keeps its contract: uint8 images (N, C, H, W) in,
normalised inside, one float32 tensor or a tuple of them out. For the CPU engines the module
is exported once to ONNX (batch, height and width left dynamic, so batches of any shape run),
cached under `<cache_dir>/engines/`, and checked against torch before it is trusted.

Choosing (`auto`): torch on CUDA; on a CPU the first of `AUTO_ORDER` that is installed, builds
and agrees with torch, else torch. The order is measured (`python -m training.bench --device
cpu --engines`): OpenVINO was the fastest on both backbones, ONNX Runtime second.

Precision: every engine runs float32. OpenVINO's CPU plugin would otherwise pick bf16 on a CPU
that has it (max |dlogit| 0.04 on Lite0 on the 2-core machine, 0.48 on another); the hint is
pinned and read back. Any engine whose outputs differ from torch's by more than `TOLERANCE` x
max(1, |output|) on the example batch is not used.

Threads: each engine gets an explicit intra-op thread count (default: torch's), so that it
does not take the cores the DataLoader's decoding workers need.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vocdata.atomic import atomic_write
from vocdata.cachefiles import sha256_of
from vocdata.jsonio import JsonFileError, read_json, write_json

log = logging.getLogger(__name__)

ENGINE_CHOICES = ("auto", "torch", "onnxruntime", "openvino")
AUTO_ORDER = ("openvino", "onnxruntime")  # fastest first on the 2-core CPU (docs: bench)
PIP_PACKAGE = {"onnxruntime": "onnxruntime", "openvino": "openvino", "onnx": "onnx"}

# Largest allowed max |engine - torch| per output, relative to the output's own scale
# (max(1, max |torch output|)). float32 re-association (other summation orders, fused
# convolution + batch norm) measures 1e-6..4e-6 on ImageNet-scale logits, up to 2e-5 seen;
# bf16 or fp16 execution errs by 1e-2 or more. 1e-4 sits between both, a margin of 5x or
# more on each side.
TOLERANCE = 1e-4

# The exported graph: bump EXPORT_FORMAT when the export code changes what it writes.
EXPORT_FORMAT = 1
ONNX_OPSET = 17
INPUT_NAME = "images"
ENGINES_SUBDIR = "engines"

Output = torch.Tensor | tuple[torch.Tensor, ...]


class EngineError(RuntimeError):
    """An engine asked for by name cannot run here; the message names the fix."""


class EngineMismatchError(RuntimeError):
    """An engine's outputs differ from torch's by more than `TOLERANCE`."""


# -- the engines ---------------------------------------------------------------------------------
class ForwardEngine:
    """Runs the module forward on uint8 CPU batches; returns float32 CPU tensors."""

    name: str = ""

    def __call__(self, images: torch.Tensor) -> Output:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the log and the provenance: engine, versions, precision, threads."""
        raise NotImplementedError

    def eval(self) -> ForwardEngine:
        """Already in eval mode: lets an engine stand where `training.loop.predict` and
        `tta_logits` take a module."""
        return self


def _as_output(arrays: Sequence[np.ndarray], single: bool) -> Output:
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays)
    return tensors[0] if single else tensors


def _float_cpu(output: Output) -> Output:
    if isinstance(output, torch.Tensor):
        return output.float().cpu()
    return tuple(t.float().cpu() for t in output)


class TorchEngine(ForwardEngine):
    """PyTorch eager; channels-last (the module is converted in place) where measured faster."""

    name = "torch"

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        channels_last: bool,
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        self.device, self.channels_last, self.amp_dtype = device, channels_last, amp_dtype
        memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.module = module.to(device, memory_format=memory_format).eval()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> Output:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp_dtype is not None):
            return _float_cpu(self.module(images))

    def describe(self) -> str:
        layout = "channels-last" if self.channels_last else "NCHW"
        precision = f"{self.amp_dtype} autocast" if self.amp_dtype else "float32"
        threads = f", threads {torch.get_num_threads()}" if self.device.type == "cpu" else ""
        return f"torch {torch.__version__} eager on {self.device}, {layout}, {precision}{threads}"


class OnnxRuntimeEngine(ForwardEngine):
    """ONNX Runtime's CPU execution provider, float32, `threads` intra-op threads that sleep
    instead of spinning between batches (a spinning pool takes a whole core from the loader)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int, single_output: bool) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: its warnings are not the user's business
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.version, self.threads, self.single = onnxruntime.__version__, threads, single_output

    def __call__(self, images: torch.Tensor) -> Output:
        pixels = images.cpu().contiguous().numpy()
        return _as_output(self.session.run(None, {INPUT_NAME: pixels}), self.single)

    def describe(self) -> str:
        return (
            f"onnxruntime {self.version} CPUExecutionProvider, float32, "
            f"intra-op threads {self.threads} (ONNX opset {ONNX_OPSET})"
        )


class _OpenVinoThread:
    """The one thread every OpenVINO object is made, run and dropped on.

    OpenVINO's CPU plugin gives a thread that runs an inference an alternate signal stack,
    and frees that stack when the compiled model goes, restoring the alternate stack of
    whichever thread drops it. Dropped on another thread (Python's garbage collector runs in
    any thread), the first thread is left pointing at freed memory, and the next signal it
    takes (a data-loader worker's SIGCHLD reaches the main thread) kills the process with a
    segmentation fault (measured). So OpenVINO runs on this thread alone, which blocks every
    signal: no signal is ever delivered on its stacks, and the main thread's are never
    touched.
    """

    _executor: ThreadPoolExecutor | None = None
    _lock = threading.Lock()

    @classmethod
    def executor(cls) -> ThreadPoolExecutor:
        with cls._lock:
            if cls._executor is None:
                cls._executor = ThreadPoolExecutor(
                    max_workers=1,
                    thread_name_prefix="openvino",
                    initializer=signal.pthread_sigmask,
                    initargs=(signal.SIG_BLOCK, signal.valid_signals()),
                )
            return cls._executor

    @classmethod
    def run(cls, function: Callable[..., Any], *args: Any) -> Any:
        return cls.executor().submit(function, *args).result()

    @classmethod
    def drop(cls, holder: dict[str, Any]) -> None:
        """Release `holder`'s OpenVINO objects on the OpenVINO thread (without waiting)."""
        with contextlib.suppress(RuntimeError):  # at interpreter exit the thread is gone
            cls.executor().submit(holder.clear)


class OpenVinoEngine(ForwardEngine):
    """OpenVINO on the CPU with INFERENCE_PRECISION_HINT pinned to f32 (read back after
    compiling: its default on a CPU with bf16 units is bf16), latency mode, `threads` threads.
    Every OpenVINO call runs on `_OpenVinoThread` (see there why)."""

    name = "openvino"

    def __init__(
        self, onnx_path: Path, threads: int, single_output: bool, precision: str | None = "f32"
    ) -> None:
        import openvino

        self._objects: dict[str, Any] = {}  # touched on the OpenVINO thread only
        self.version = openvino.__version__.split("-")[0]  # "2026.4.1-22982-<commit>-releases/..."
        self.threads, self.single = threads, single_output
        self.precision = _OpenVinoThread.run(self._compile, onnx_path, threads, precision)
        if precision is not None and self.precision != precision:
            raise EngineMismatchError(
                f"openvino kept inference precision {self.precision} although f32 was asked for"
            )

    def _compile(self, onnx_path: Path, threads: int, precision: str | None) -> str:
        import openvino

        core = openvino.Core()
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
        }
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        self._objects.update(compiled=compiled, request=compiled.create_infer_request())
        return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def _infer(self, pixels: np.ndarray) -> list[np.ndarray]:
        compiled, request = self._objects["compiled"], self._objects["request"]
        # share_outputs=False: the request reuses its output buffers on the next call.
        result = request.infer({0: pixels}, share_outputs=False)
        return [result[output] for output in compiled.outputs]

    def __call__(self, images: torch.Tensor) -> Output:
        pixels = images.cpu().contiguous().numpy()
        return _as_output(_OpenVinoThread.run(self._infer, pixels), self.single)

    def __del__(self) -> None:
        objects = getattr(self, "_objects", None)  # None: __init__ failed before making any
        if objects:
            _OpenVinoThread.drop(objects)

    def describe(self) -> str:
        return (
            f"openvino {self.version} CPU, inference precision {self.precision} (pinned), "
            f"threads {self.threads}"
        )


def _import_engine(name: str) -> None:
    """Import `name`'s package, then onnx (torch's exporter writes the graph with it), so a
    missing one (ImportError) is told apart from a broken one (anything else) and from a
    failed export."""
    importlib.import_module(name)
    import onnx  # noqa: F401


def _missing_package(error: ImportError, engine: str) -> str:
    """The pip package whose absence `error` reports (`engine`'s own when unclear)."""
    top = (error.name or "").split(".")[0]
    return PIP_PACKAGE.get(top, PIP_PACKAGE[engine])


def _open_engine(name: str, onnx_path: Path, threads: int, single_output: bool) -> ForwardEngine:
    if name == "onnxruntime":
        return OnnxRuntimeEngine(onnx_path, threads, single_output)
    return OpenVinoEngine(onnx_path, threads, single_output)


# -- export and the cache ------------------------------------------------------------------------
def output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output{i}" for i in range(count)]


def export_onnx_graph(
    module: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    path: Path,
    names: list[str],
    input_name: str | list[str] = INPUT_NAME,
) -> None:
    """Write `module` as ONNX to `path`, batch, height and width of every input dynamic
    (several inputs: `example` and `input_name` give one each).

    The TorchScript-based exporter is used on purpose: torch.export's dynamic-shape reasoning
    over EfficientNet's "SAME" padding took minutes (and then failed under strict dims) where
    tracing takes half a second and keeps the padding computed from the input's shape, which
    the check at a second size confirms.
    """
    examples = example if isinstance(example, tuple) else (example,)
    inputs = input_name if isinstance(input_name, list) else [input_name]
    dynamic = {
        name: {0: "batch", 2: f"height_{k}", 3: f"width_{k}"} for k, name in enumerate(inputs)
    }
    dynamic.update({name: {0: "batch"} for name in names})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        with torch.no_grad():
            torch.onnx.export(
                module,
                examples,
                str(path),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=inputs,
                output_names=names,
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )


def graph_key(module: nn.Module, example: torch.Tensor, key: str, outputs: int) -> dict[str, Any]:
    """What the exported file depends on: the weights (the caller's `key`), the module's
    structure, the input's channels and dtype, and the exporter. The engine that later runs
    the file is not part of it (both read the same ONNX file, and each is checked anyway)."""
    structure = hashlib.sha256(repr(module).encode()).hexdigest()[:16]
    return {
        "format": EXPORT_FORMAT,
        "weights": key,
        "structure": structure,
        "input": {"channels": int(example.shape[1]), "dtype": str(example.dtype)},
        "outputs": outputs,
        "exporter": "torch.onnx TorchScript",
        "torch": torch.__version__,
        "opset": ONNX_OPSET,
    }


def _cache_problem(graph: Path, manifest: Path, wanted: dict[str, Any]) -> str | None:
    """None when `graph` is the complete, unchanged export for `wanted`, else what is wrong."""
    try:
        saved = read_json(manifest, "an engine cache manifest", dict)
    except JsonFileError as error:
        return str(error)
    if saved.get("key") != wanted:
        return "it was exported for another key"
    if not graph.is_file():
        return f"{graph.name} is missing"
    if graph.stat().st_size != saved.get("bytes") or sha256_of(graph) != saved.get("sha256"):
        return f"{graph.name} does not match its checksum (changed or cut short)"
    return None


@dataclass
class CachedGraph:
    path: Path
    exported: bool  # False: read from the cache
    seconds: float  # the export's cost (this time or, from the cache, the first time)


def cached_onnx(
    module: nn.Module, example: torch.Tensor, cache_dir: Path, key: str, outputs: int
) -> CachedGraph:
    """The ONNX file of `module` from `<cache_dir>/engines/`, verified; exported (and the cost
    logged) when absent, damaged or stale. The file is written first and its manifest (key,
    size, sha256) last, both atomically: a file without a matching manifest is never used."""
    wanted = graph_key(module, example, key, outputs)
    name = hashlib.sha256(repr(sorted(wanted.items())).encode()).hexdigest()[:24]
    folder = Path(cache_dir) / ENGINES_SUBDIR
    graph, manifest = folder / f"{name}.onnx", folder / f"{name}.json"
    if graph.exists() or manifest.exists():
        problem = _cache_problem(graph, manifest, wanted)
        if problem is None:
            saved = read_json(manifest, "an engine cache manifest", dict)
            log.info("engine cache hit: %s", graph)
            return CachedGraph(graph, False, float(saved.get("export_seconds", 0.0)))
        log.warning("engine cache %s is not usable (%s): exporting it again", graph, problem)
    started = time.perf_counter()
    with atomic_write(graph) as tmp:
        export_onnx_graph(module, example, tmp, output_names(outputs))
    seconds = time.perf_counter() - started
    write_json(
        manifest,
        {
            "key": wanted,
            "bytes": graph.stat().st_size,
            "sha256": sha256_of(graph),
            "export_seconds": round(seconds, 3),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    log.info("exported the network to ONNX in %.1f s (cached as %s)", seconds, graph)
    return CachedGraph(graph, True, seconds)


# -- the check -----------------------------------------------------------------------------------
def check_inputs(example: torch.Tensor) -> list[torch.Tensor]:
    """The example batch, and its first image cropped by one pixel in height and width: a
    graph that froze the example's shape (padding, pooling) fails at the second size."""
    inputs = [example.contiguous()]
    if example.shape[-2] > 32 and example.shape[-1] > 32:
        inputs.append(example[:1, :, :-1, :-1].contiguous())
    return inputs


def _as_tuple(output: Output) -> tuple[torch.Tensor, ...]:
    return (output,) if isinstance(output, torch.Tensor) else tuple(output)


def max_difference(candidate: Output, reference: Output) -> tuple[float, float]:
    """(max |candidate - reference| over every output, the allowed maximum: `TOLERANCE` x
    max(1, |reference|), the loosest output's). Shapes must agree."""
    worst, allowed = 0.0, TOLERANCE
    for got, want in zip(_as_tuple(candidate), _as_tuple(reference), strict=True):
        if got.shape != want.shape:
            raise EngineMismatchError(f"output shape {tuple(got.shape)} != {tuple(want.shape)}")
        difference = float((got.float() - want.float()).abs().max()) if want.numel() else 0.0
        scale = TOLERANCE * max(1.0, float(want.abs().max()) if want.numel() else 0.0)
        if difference / scale > worst / allowed:
            worst, allowed = difference, scale
    return worst, allowed


def _check(engine: ForwardEngine, inputs: list[torch.Tensor], references: list[Output]) -> float:
    worst, allowed = 0.0, TOLERANCE
    for images, reference in zip(inputs, references, strict=True):
        difference, limit = max_difference(engine(images), reference)
        if difference / limit > worst / allowed:
            worst, allowed = difference, limit
    if not worst <= allowed:  # also catches NaN
        raise EngineMismatchError(
            f"max |output - torch| {worst:.2g} > {allowed:.2g} on the example batch"
        )
    return worst


# -- building ------------------------------------------------------------------------------------
def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


def build_engine(
    module: nn.Module,
    engine: str,
    *,
    example: torch.Tensor,
    cache_dir: Path | None,
    key: str,
    device: torch.device,
    threads: int | None = None,
    channels_last: bool | None = None,
    amp_dtype: torch.dtype | None = None,
) -> ForwardEngine:
    """The engine that runs `module` (put in eval mode) forward for this process.

    `engine`: one of `ENGINE_CHOICES`. `example`: a uint8 batch (N, C, H, W) fixing channels
    and dtype, also the batch every engine is checked on against torch; batch, height and
    width stay dynamic. `key`: the caller's digest of every weight `module` uses (it names
    the cached export). `cache_dir` None: export to a temporary folder each time.
    `threads`: intra-op threads of the CPU engines (default: torch's thread count).
    `channels_last` (torch engine; default: on, measured faster on CPU and CUDA) converts the
    module in place. `amp_dtype`: autocast of the torch engine on CUDA (as the trainer's
    Runtime); the CPU engines are float32 only.

    An engine asked for by name that is not installed is an EngineError naming the pip
    package; one that fails to export, compile or agree with torch falls back to torch with
    one warning line, under `auto` after trying the next engine of `AUTO_ORDER`.
    """
    if engine not in ENGINE_CHOICES:
        raise EngineError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINE_CHOICES)}")
    device = torch.device(device)
    module.eval()
    use_channels_last = True if channels_last is None else channels_last

    def torch_engine() -> ForwardEngine:
        return TorchEngine(module, device, use_channels_last, amp_dtype)

    if engine == "torch" or (engine == "auto" and device.type != "cpu"):
        return _announce(torch_engine())
    if device.type != "cpu":
        raise EngineError(
            f"--engine {engine} runs on the CPU, but the device is {device}: use --engine auto "
            f"or torch there, or --device cpu"
        )
    candidates = AUTO_ORDER if engine == "auto" else (engine,)
    installed, missing, problems = [], set(), []
    for name in candidates:
        try:
            _import_engine(name)
        except ImportError as error:
            package = _missing_package(error, name)
            if engine != "auto":
                role = " (torch's ONNX exporter needs it)" if package == "onnx" else ""
                raise EngineError(
                    f"--engine {name} needs the pip package {package}{role}, which is not "
                    f"installed: pip install {package}, or use --engine auto or torch"
                ) from None
            missing.add(package)
        except Exception as error:  # installed but broken (a missing shared library, ...)
            problems.append(f"{name} cannot be imported ({_first_line(error)})")
        else:
            installed.append(name)
    if not installed:
        if "onnx" in missing:
            problems.append("the pip package onnx (torch's ONNX exporter) is not installed")
        elif not problems:
            names = " or ".join(PIP_PACKAGE[name] for name in AUTO_ORDER)
            problems.append(f"no CPU inference engine installed (pip install {names})")
        log.warning("%s: running torch instead", "; ".join(problems))
        return _announce(torch_engine())
    return _build_cpu_engine(
        module, installed, problems, example, cache_dir, key, threads, torch_engine
    )


def _build_cpu_engine(
    module: nn.Module,
    names: list[str],
    problems: list[str],
    example: torch.Tensor,
    cache_dir: Path | None,
    key: str,
    threads: int | None,
    torch_engine: Callable[[], ForwardEngine],
) -> ForwardEngine:
    """The first of `names` that exports, opens and agrees with torch; else torch. At most
    one warning line, naming what failed (`problems` so far, and more) and what runs instead."""
    threads = threads or torch.get_num_threads()
    module.cpu()
    with tempfile.TemporaryDirectory(prefix="engine-") as scratch:
        try:
            inputs = check_inputs(example.cpu())
            with torch.inference_mode():
                references = [_float_cpu(module(images)) for images in inputs]
            outputs = len(_as_tuple(references[0]))
            single = isinstance(references[0], torch.Tensor)
            graph = cached_onnx(module, example.cpu(), Path(cache_dir or scratch), key, outputs)
        except Exception as error:  # an unexportable module: every CPU engine needs the graph
            problems.append(f"export to ONNX failed ({_first_line(error)})")
            names = []
        for name in names:
            try:
                built = _open_engine(name, graph.path, threads, single)
                difference = _check(built, inputs, references)
            except Exception as error:  # broken install, unsupported op, mismatch: next one
                problems.append(f"{name} not used ({_first_line(error)})")
                continue
            log.info("%s: max |output - torch| %.2g on the example batch", name, difference)
            if problems:
                log.warning("%s: running %s instead", "; ".join(problems), name)
            return _announce(built)
    log.warning("%s: running torch instead", "; ".join(problems))
    return _announce(torch_engine())


def _announce(engine: ForwardEngine) -> ForwardEngine:
    log.info("forward passes: %s", engine.describe())
    return engine
