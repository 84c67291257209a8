"""The layering rule of the README ("Project layout"), asserted from the import graph.

Every tracked .py file is parsed with `ast`; its imports of project packages are checked
against the layers. Entry points (`main_*.py`, any `__main__.py`) sit on top and may import
anything, so they are not checked.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import PurePosixPath

import pytest

from tests.conftest import tracked_python_files
from vocdata.paths import PROJECT_ROOT

PACKAGES = ("vocdata", "training", "predictions", "evaluation", "gui", "wsconv")
# The metrics are pure numpy, low in the house: training validates with them, the GUI shows
# them. The rest of evaluation (report, figures, grids) is used by nobody below it.
METRICS = {
    "evaluation.metrics",
    "evaluation.ranking",
    "evaluation.tailacc",
    "evaluation.label_quality",
}
REPORT = {
    "evaluation.report",
    "evaluation.figures",
    "evaluation.grids",
    "evaluation.compare",
    "evaluation.compare_figures",
}
# The comparison grid is pure text like the tables, so a sweep in training/ may print it.
LOW_MODULES = METRICS | {
    "evaluation.tables",
    "evaluation.compare_table",
    "predictions.format",
    "predictions.provenance",
    "predictions.ensemble",
}


@dataclass(frozen=True)
class Edge:
    source: str  # file, relative to the project root
    target: str  # the imported project module, dotted
    lazy: bool  # inside a function body (imported only when called)

    def __str__(self) -> str:
        return f"{self.source} imports {self.target}" + (" (lazily)" if self.lazy else "")


def _module_name(path: str) -> str:
    parts = list(PurePosixPath(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        # `from package import module` imports that module: name both, the longer one counts.
        return [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
    return []


def _edges(path: str) -> list[Edge]:
    tree = ast.parse((PROJECT_ROOT / path).read_text(), filename=path)
    edges: list[Edge] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            for name in _imported(child):
                if name.split(".")[0] in PACKAGES:
                    edges.append(Edge(path, name, lazy))
            visit(child, inner)

    visit(tree, False)
    return edges


def _source_files() -> list[str]:
    """The package modules (entry points `__main__.py` left out: they may import anything)."""
    return [
        name
        for name in tracked_python_files()
        if name.split("/")[0] in PACKAGES and PurePosixPath(name).name != "__main__.py"
    ]


def _within(target: str, modules: set[str]) -> bool:
    return any(target == m or target.startswith(m + ".") for m in modules)


def _violations(rule) -> list[str]:
    return [str(edge) for path in _source_files() for edge in _edges(path) if rule(edge)]


def _layer(edge: Edge) -> str:
    return _module_name(edge.source)


def test_the_import_graph_is_read():
    """Guards the other tests: an empty graph would make every rule pass."""
    edges = [edge for path in _source_files() for edge in _edges(path)]
    assert Edge("training/trainer.py", "evaluation.metrics", False) in edges
    assert Edge("gui/launch.py", "gui.app", True) in edges


def test_vocdata_is_the_ground_floor():
    assert not _violations(
        lambda e: _layer(e).startswith("vocdata") and not e.target.startswith("vocdata")
    )


def test_metrics_and_predictions_format_import_nothing_above_them():
    above = ("training", "gui", "wsconv")
    assert not _violations(
        lambda e: (
            _module_name(e.source) in LOW_MODULES
            and (e.target.split(".")[0] in above or _within(e.target, REPORT))
        )
    )


def test_predictions_import_neither_training_gui_wsconv_nor_the_report():
    assert not _violations(
        lambda e: (
            _layer(e).startswith("predictions")
            and (
                e.target.split(".")[0] in ("training", "gui", "wsconv") or _within(e.target, REPORT)
            )
        )
    )


def test_training_imports_neither_gui_wsconv_nor_the_report():
    assert not _violations(
        lambda e: (
            _layer(e).startswith("training")
            and (e.target.split(".")[0] in ("gui", "wsconv") or _within(e.target, REPORT))
        )
    )


def test_evaluation_reads_run_folders_not_training():
    assert not _violations(
        lambda e: (
            _layer(e).startswith("evaluation")
            and e.target.split(".")[0] in ("training", "gui", "wsconv")
        )
    )


# What the GUI may import from training, inside a function only: the one model loader and the
# backbone registry (which names each backbone's activation-map layer).
GUI_LAZY_TRAINING = ("training.checkpoint", "training.backbones")


def test_gui_loads_a_model_only_lazily_through_load_model():
    assert not _violations(
        lambda e: (
            _layer(e).startswith("gui")
            and (
                e.target.split(".")[0] == "wsconv"
                or _within(e.target, REPORT)
                or (
                    e.target.startswith("training")
                    and not (e.lazy and e.target.startswith(GUI_LAZY_TRAINING))
                )
            )
        )
    )


@pytest.mark.parametrize(
    "module",
    [
        "predictions",
        "predictions.format",
        "evaluation.metrics",
        "evaluation.compare_table",
        "evaluation.label_quality",
        "gui.model",
        "vocdata",
    ],
)
def test_light_modules_do_not_load_torch(module):
    """The predictions format, the metrics and the GUI's model stay usable without torch."""
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT)
    assert result.returncode == 0, f"importing {module} loads torch"


def _training_module_graph() -> dict[str, set[str]]:
    """Module -> the training modules it imports (module level or lazily), `__init__` and the
    entry points left out: the package's own layering."""
    modules = {
        _module_name(path)
        for path in _source_files()
        if path.startswith("training/") and not path.endswith("__init__.py")
    }
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for path in _source_files():
        source = _module_name(path)
        if source not in graph:
            continue
        for edge in _edges(path):
            # `from training.trainer import Trainer` names training.trainer.Trainer too: keep
            # the longest name that is a module.
            target = max(
                (m for m in modules if edge.target == m or edge.target.startswith(m + ".")),
                key=len,
                default=None,
            )
            if target is not None and target != source:
                graph[source].add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (a list of modules, first = last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    """Guards the next test: the finder must see a circle, lazy or not."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_inside_training():
    """Within training/, imports point one way (lazy imports count too): the trainer knows
    nothing of k-fold runs, and only `training.run` dispatches between the two."""
    graph = _training_module_graph()
    assert "training.crossval" in graph and "training.trainer" in graph["training.crossval"]
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph))
    assert "training.crossval" not in graph["training.trainer"]
