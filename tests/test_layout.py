"""The package layout: no module hidden by a name of the same name, every file one concept."""

import importlib
import pathlib
import pkgutil

import stabkit


def _modules():
    yield from (
        m.name
        for m in pkgutil.walk_packages(stabkit.__path__, "stabkit.")
        if m.name != "stabkit.__main__"
    )


def test_no_module_is_hidden_by_a_name_of_its_package():
    # `import stabkit.X.Y as m` must give the module: a function or class of the same name in the
    # package (`stabkit.softmax`, `stabkit.fixes.loss_scaling`) would replace it as an attribute.
    for name in _modules():
        module = importlib.import_module(name)
        parent, _, leaf = name.rpartition(".")
        assert getattr(importlib.import_module(parent), leaf) is module, name


def test_the_functions_beside_their_modules():
    for name, module in [
        ("softmax", "stabkit.stable_softmax"),
        ("sweep", "stabkit.sweeps"),
        ("train", "stabkit.training"),
    ]:
        assert callable(getattr(stabkit, name))
        assert getattr(importlib.import_module(module), name) is getattr(stabkit, name)


def test_no_old_module_paths_remain():
    root = pathlib.Path(stabkit.__file__).parent
    for old in [
        "softmax.py",
        "sweep.py",
        "train.py",
        "plot.py",
        "_sweep_spec.py",
        "precision.py",
        "fixes.py",
        "theory.py",
        "_meanfield.py",
        "_profiles.py",
        "_jacobian.py",
    ]:
        assert not (root / old).exists(), old


def test_subpackages_export_what_they_list():
    for module in [
        "stabkit.sweeps",
        "stabkit.training",
        "stabkit.precision",
        "stabkit.fixes",
        "stabkit.theory",
    ]:
        m = importlib.import_module(module)
        assert m.__all__ and all(hasattr(m, name) for name in m.__all__), module
