"""The shape of the tree: each package is one job and the imports only point down.

    core  <-  model  <-  trainer            (the training program)
    core  <-  extractors                    (stages, found through config by the pipeline)
    core  <-  pipeline                      (the extraction program)
    core, model, trainer, pipeline, extractors  <-  app (the web app and predict; nothing imports it)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.modalities import NAMES

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "model", "extractors", "pipeline", "trainer", "app", "scripts")
ALLOWED = {
    "core": {"core"},
    "model": {"core", "model"},
    "extractors": {"core", "extractors"},
    "pipeline": {"core", "pipeline"},
    "trainer": {"core", "model", "trainer"},
    # app runs the extractor stages in-process (predict): it reads extractors/weights.py's table
    # of what they load, for the weights preflight
    "app": {"core", "model", "trainer", "pipeline", "extractors", "app"},
}


def project_imports(path: Path) -> set[str]:
    """Top-level project packages a module imports (at the top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_only_point_down(package):
    wrong = {str(p.relative_to(ROOT)): sorted(project_imports(p) - ALLOWED[package])
             for p in sorted((ROOT / package).glob("*.py"))}
    wrong = {k: v for k, v in wrong.items() if v}
    assert not wrong, f"{package}/ may import only {sorted(ALLOWED[package])}: {wrong}"


def test_the_trainer_never_loads_a_video_decoder_or_the_demo_generator():
    code = ("import sys, trainer.recipe, trainer.evaluate, scripts.train, scripts.eval, scripts.params; "
            "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split())
    assert "trainer.recipe" in loaded and "model.crema" in loaded  # the import really happened
    for forbidden in ("av", "decord", "pipeline.demo", "pipeline", "extractors", "ray", "open3d"):
        assert forbidden not in loaded, f"the trainer's import closure contains {forbidden}"


def _literal_lists_of_modalities(source: str) -> list[int]:
    """Line numbers of list/tuple/set literals naming three or more modalities."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            names = {e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in NAMES}
            if len(names) >= 3:
                hits.append(node.lineno)
    return hits


def test_the_modality_list_is_written_once():
    table = ROOT / "core" / "modalities.py"
    sources = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py")) if p != table]
    found = {str(p.relative_to(ROOT)): lines for p in sources
             if (lines := _literal_lists_of_modalities(p.read_text()))}
    assert not found, f"modality lists outside core/modalities.py (read core.modalities instead): {found}"
    # the check sees a copy of the list when there is one
    assert _literal_lists_of_modalities('IMAGE = ("rgb", "depth", "flow")\nx = ["audio"]') == [1]


def test_no_program_calls_a_private_method_of_the_model():
    # the web app and predict once scored options through Crema._letter_scores / _option_scores:
    # a refactor of the model would break them silently; they use Crema.choice_scores
    from model.crema import Crema

    private = {n for n in dir(Crema) if n.startswith("_") and not n.startswith("__")} - set(dir(torch.nn.Module))
    calls = []
    for package in ("app", "trainer", "scripts"):
        for path in sorted((ROOT / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr in private and not (
                        isinstance(node.value, ast.Name) and node.value.id == "self"):
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not calls, calls
