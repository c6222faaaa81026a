"""Every docstring example of the package runs as a doctest and shows what it says it shows.

The examples assume ``import torch``, like those of PyTorch's own docs. Those that load a
trained model use ``runs/demo/bilinear/fc/best.pt`` (and its export ``best.pt2``) and
``demo-images/``, the files of the deploy guide (docs/deploy.md), which the fixture writes into a
fresh working folder: a tiny bilinear model with the demo's classes and image size, and the
synthetic test images. The kernel launchers' examples need a CUDA GPU.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import bcnn_triton.kernels
import pytest
import torch
from deploy.checkpoints import write_checkpoint

import bcnn_triton
from bcnn_triton.data import SyntheticSecondOrder
from bcnn_triton.deploy import export_pt2, load_trained_model
from bcnn_triton.models import create_model

DEMO_CLASSES = [f"pairing+{k}" for k in range(4)]
DEMO_IMAGE_SIZE = 64


def _examples(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, module_name)
    return [test for test in tests if test.examples]


# Every module of the package but ``__main__`` (which runs the command line when imported);
# the kernels are installed from their own folder (kernels/), so they are listed from there.
MODULES = sorted(
    info.name
    for package in (bcnn_triton, bcnn_triton.kernels)
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
    if not info.name.endswith("__main__")
)
MODULES_WITH_EXAMPLES = [name for name in MODULES if _examples(name)]


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    """The deploy guide's files, written once for all examples."""
    tmp_path = tmp_path_factory.mktemp("demo")
    model = create_model("bilinear", backbone="tiny", num_classes=len(DEMO_CLASSES))
    preprocessing = {
        "image_size": DEMO_IMAGE_SIZE,
        "resize": "shorter_side",
        "crop": "center",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    }
    checkpoint = write_checkpoint(
        tmp_path / "runs/demo/bilinear/fc",
        model,
        classes=DEMO_CLASSES,
        preprocessing=preprocessing,
    )
    export_pt2(load_trained_model(checkpoint), checkpoint.with_suffix(".pt2"))
    SyntheticSecondOrder(3, image_size=DEMO_IMAGE_SIZE).save_images(tmp_path / "demo-images")
    return tmp_path


@pytest.fixture
def demo_folder(demo_files, monkeypatch):
    monkeypatch.chdir(demo_files)
    return demo_files


def test_the_package_has_examples():
    assert sum(len(_examples(name)) for name in MODULES_WITH_EXAMPLES) >= 25


@pytest.mark.parametrize("module_name", MODULES_WITH_EXAMPLES)
def test_docstring_examples(module_name, demo_folder):
    examples = _examples(module_name)
    if module_name.startswith("bcnn_triton.kernels.") and not torch.cuda.is_available():
        pytest.skip("the launchers' examples run on a CUDA GPU")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in examples:
        test.globs = {**test.globs, "torch": torch}
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} of {runner.tries} examples failed (above)"
