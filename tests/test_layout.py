"""The package layout: no module hidden by a function of the same name, every file one concept."""

import importlib
import pathlib

import stabkit


def test_modules_are_importable_by_name_beside_the_functions():
    # stabkit.softmax / .sweep / .train are the functions; their code lives in modules whose names
    # no function shadows, so `import stabkit.X as m` gives the module.
    for name, module in [
        ("softmax", "stabkit.stable_softmax"),
        ("sweep", "stabkit.sweeps"),
        ("train", "stabkit.training"),
    ]:
        assert callable(getattr(stabkit, name))
        m = importlib.import_module(module)
        assert m.__name__ == module and getattr(m, name) is getattr(stabkit, name)


def test_no_old_module_paths_remain():
    root = pathlib.Path(stabkit.__file__).parent
    for old in ["softmax.py", "sweep.py", "train.py", "plot.py", "_sweep_spec.py"]:
        assert not (root / old).exists(), old


def test_subpackages_export_what_they_list():
    for module in ["stabkit.sweeps", "stabkit.training"]:
        m = importlib.import_module(module)
        assert m.__all__ and all(hasattr(m, name) for name in m.__all__), module
