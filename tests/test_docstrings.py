"""Every public function and class has a docstring with an example, and the examples run."""
import doctest
import importlib
import inspect
import pkgutil

import pytest

import fastconv
import fastconv.layers

PUBLIC_MODULES = ["fastconv", "fastconv.functional", "fastconv.layers", "fastconv.models",
                  "fastconv.convert", "fastconv.preprocess", "fastconv.runtime",
                  "fastconv.sklearn", "fastconv.dask"]
EXTRA_MODULES = {"fastconv.sklearn", "fastconv.dask"}  # skipped when their extra is not installed
DOCTEST_MODULES = (["fastconv.functional", "fastconv.layers", "fastconv.runtime", "fastconv.model"]
                   + [f"fastconv.layers.{info.name}"
                      for info in pkgutil.iter_modules(fastconv.layers.__path__)])
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def public_objects(module):
    """(name, object) of the module's public functions and classes: its ``__all__``, else the
    non-underscore functions and classes defined in it."""
    if hasattr(module, "__all__"):
        items = [(name, getattr(module, name)) for name in module.__all__]
    else:
        items = [(name, obj) for name, obj in vars(module).items()
                 if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__]
    return [(name, obj) for name, obj in items if inspect.isfunction(obj) or inspect.isclass(obj)]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_names_have_an_example(module_name):
    if module_name in EXTRA_MODULES:
        module = pytest.importorskip(module_name)
    else:
        module = importlib.import_module(module_name)
    objects = public_objects(module)
    assert objects, f"{module_name}: no public functions or classes found"
    missing = [name for name, obj in objects if ">>>" not in (inspect.getdoc(obj) or "")]
    assert not missing, f"{module_name}: public names without a docstring example: {missing}"


def test_preprocess_exports_only_its_own_functions():
    import fastconv.preprocess as preprocess

    assert "lru_cache" not in preprocess.__all__
    for name in preprocess.__all__:
        assert getattr(preprocess, name).__module__ == "fastconv.preprocess"


@pytest.mark.parametrize("module_name", DOCTEST_MODULES)
def test_doctests_pass(module_name):
    module = importlib.import_module(module_name)
    threads = fastconv.get_num_threads()
    try:
        result = doctest.testmod(module, optionflags=OPTIONS)
    finally:
        fastconv.set_num_threads(threads)  # the runtime examples set it; never leak a change
    assert result.failed == 0, f"{module_name}: {result.failed} of {result.attempted} examples failed"
