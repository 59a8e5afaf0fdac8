"""The distribution installs `hf_minitron` (with `hf_minitron.kernels`) and no top-level `kernels` module."""

import subprocess
import sys
import zipfile

from conftest import REPO_ROOT


def _run(code: str, cwd) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_light_imports(tmp_path):
    out = _run(
        "import sys, hf_minitron, hf_minitron.kernels, hf_minitron.cli\n"
        "print(sorted(m for m in ('trl', 'peft', 'datasets') if m in sys.modules))",
        cwd=tmp_path,
    )
    assert out.strip() == "[]"


def test_no_top_level_kernels_module(tmp_path):
    out = _run("import importlib.util; print(importlib.util.find_spec('kernels'))", cwd=tmp_path)
    assert out.strip() == "None"


def test_wheel_contents(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO_ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("hf_minitron-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"hf_minitron", wheel.name.split("-py")[0] + ".dist-info"} or all(
        t == "hf_minitron" or t.endswith(".dist-info") for t in tops
    ), tops
    assert "hf_minitron/kernels/__init__.py" in names
    assert "hf_minitron/model_cards/minitron.md" in names
    # every subpackage of the source tree is in the wheel (a package missing from pyproject's list would not be)
    for init in (REPO_ROOT / "hf_minitron").rglob("__init__.py"):
        rel = init.relative_to(REPO_ROOT).as_posix()
        assert rel in names, f"{rel} is missing from the wheel: add its package to pyproject.toml's `packages`"
    for data in (REPO_ROOT / "hf_minitron" / "prompts").glob("*.jsonl"):
        assert data.relative_to(REPO_ROOT).as_posix() in names, data
    entry_points = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points[0]).decode()
    assert "hf-minitron = hf_minitron.cli:main" in text


def test_every_public_name_resolves():
    import hf_minitron

    for name in hf_minitron.__all__:
        assert getattr(hf_minitron, name) is not None, name
    # a submodule that shares a function's name would replace it on its package once imported
    import hf_minitron.stages.evaluate  # noqa: F401  (imports the evaluation submodules)
    from hf_minitron.evaluation import mean_nll, perplexity

    assert callable(perplexity) and callable(mean_nll)
