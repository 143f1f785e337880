"""No hidden deprecations: every catdog module imports in a fresh interpreter with every DeprecationWarning,
PendingDeprecationWarning and FutureWarning an error; in the tests every deprecation is an error (pyproject's
filterwarnings) but the third-party notices catdog cannot fix, each ignored by name, and a script run by the tests
fails on one raised by catdog's code (tests.conftest.STRICT_MAIN)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from tests.conftest import ROOT, run_script

# The modules of the optional extras: a catdog module that needs one may be absent here (its tests skip).
OPTIONAL = {
    "litserve", "fastapi", "starlette", "uvicorn", "huggingface_hub", "safetensors", "onnx", "onnxruntime",
    "onnxscript", "datasets", "timm", "optuna", "hydra_plugins", "mlflow", "tensorboard", "wandb", "cleanlab",
    "selenium", "submitit",
}  # fmt: skip

IMPORT_ALL = """
import importlib, pkgutil, sys
import catdog
failed = []
for info in pkgutil.walk_packages(catdog.__path__, "catdog."):
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in set(sys.argv[1].split(",")):
            failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
    except Exception as exc:
        failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
print("imported", len(list(pkgutil.walk_packages(catdog.__path__, "catdog."))))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_with_deprecations_as_errors():
    strict = ["-W", "error::DeprecationWarning", "-W", "error::PendingDeprecationWarning", "-W", "error::FutureWarning"]
    run = subprocess.run(
        [sys.executable, *strict, "-c", IMPORT_ALL, ",".join(sorted(OPTIONAL))],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert int(run.stdout.split()[1]) > 50  # the package was walked


@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning, FutureWarning])
@pytest.mark.parametrize("module", ["catdog.anything", "tests.e2e.anything", "elsewhere"])
def test_a_deprecation_fails_the_test(category, module):
    with pytest.raises(category, match="old way"):
        warnings.warn_explicit("the old way", category, "anything.py", 1, module=module)


def test_torchvisions_decoding_notice_is_ignored_by_name_only():
    """Ignored by name (catdog's torchvision fallback is deprecated on purpose), from torchvision only; any other
    torchvision deprecation still fails."""
    notice = "The image decoding and encoding capabilities of TorchVision are deprecated since torchvision 0.29 and"
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn_explicit(notice + " ...", DeprecationWarning, "image.py", 33, module="torchvision.io.image")
    assert seen == []
    with pytest.raises(DeprecationWarning, match="TorchVision are deprecated"):
        warnings.warn_explicit(notice, DeprecationWarning, "decode.py", 1, module="catdog.data.decode")
    with pytest.raises(DeprecationWarning, match="something else"):
        warnings.warn_explicit("something else is deprecated", DeprecationWarning, "x.py", 1, module="torchvision.x")


def test_scripts_run_by_the_tests_fail_on_catdogs_deprecations(tmp_path):
    script = tmp_path / "old.py"
    script.write_text("import warnings\nwarnings.warn('the old way', FutureWarning)\nprint('done')\n")
    run = run_script(str(script), [], cwd=tmp_path)
    assert run.returncode != 0 and "FutureWarning: the old way" in run.stderr and "done" not in run.stdout
    script.write_text(
        "import warnings\nwarnings.warn_explicit('their way', DeprecationWarning, 'x.py', 1, module='elsewhere')\n"
        "print('done')\n"
    )
    run = run_script(str(script), [], cwd=tmp_path)
    assert run.returncode == 0 and "done" in run.stdout, run.stderr
