"""What a trained model makes of a section: its products (an N-fold lattice, a grid of cells, ...), declared once.

A :class:`Product` names a kind of result, its options (a dataclass of declared settings,
:func:`~napari_histosge.settings.setting`) and the progress generator that makes it. Each trained
model class lists the products it makes in :attr:`TrainedModel.products
<napari_histosge.training.trained_model.TrainedModel.products>` (the first is its default);
:func:`choose_product` is the one place that asks a model for one. The library's
``superresolve``, the command line's ``histosge superresolve`` (its flags are the products'
options) and the Super-resolve widget (its form is the chosen product's options) all go
through this registry, so a new model brings its own product with one :func:`register_product`.
How a model predicts spots is registered the same way (:func:`register_spots`), under the
name its ``spots_from`` gives.

Kept free of torch and anndata: the command line builds its flags from it before loading them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any

from ..errors import InputError
from ..settings import declared_fields, setting_of

#: ``run(model, adata, options, *, scheduler, n_workers, cancel)``: a progress generator returning an AnnData.
Runner = Callable[..., Any]
#: ``run(model, adata, names, xy, positions, diameter, features, frame, *, scheduler, n_workers, cancel)``: a
#: progress generator returning ``(pred, std)`` at ``xy`` (``std`` ``None`` for a model without a spread).
SpotRunner = Callable[..., Any]


@dataclass
class ProductOptions:
    """The options of a product: a subclass declares each as a dataclass field made by :func:`setting`."""

    @classmethod
    def default_of(cls, name: str) -> Any:
        """The default of option ``name``."""
        f = cls.__dataclass_fields__[name]
        return f.default_factory() if f.default_factory is not MISSING else f.default

    def values(self) -> dict[str, Any]:
        """The options as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def check_option(cls, name: str, value: Any, label: str) -> Any:
        """``value`` of option ``name`` as its declared setting takes it (a subclass may take more forms of one).

        Raises
        ------
        InputError
            "<label> must be ...", one line.
        """
        return setting_of(cls.__dataclass_fields__[name]).check(label, value)


def _same(name: str) -> str:
    return name


@dataclass(frozen=True)
class Product:
    """One kind of result a trained model makes of a section.

    Attributes
    ----------
    name
        What users ask for it by (``product=`` in the library, ``--product`` on the command line).
    label
        Its name in the Super-resolve widget.
    help
        One line saying what it is.
    options
        Its options class (a :class:`ProductOptions` subclass of declared settings).
    run
        The progress generator that makes it, ``run(model, adata, options, *, scheduler,
        n_workers, cancel)`` returning an AnnData; or ``"module:function"`` naming it, imported
        on first use (so declaring a product loads nothing heavy).
    summary
        One line describing a result, for the command line (``"123 grid cells of 14 px"``).
    check
        Checks between options beyond each setting's own, ``check(options, label)``; an error
        names an option by ``label(name)`` (its flag on the command line).
    """

    name: str
    label: str
    help: str
    options: type[ProductOptions]
    run: Runner | str
    summary: Callable[[Any], str]
    check: Callable[[Any, Callable[[str], str]], None] | None = None

    def option_names(self) -> list[str]:
        """The names of its options, in declaration order."""
        return [f.name for f in declared_fields(self.options)]

    def make_options(self, given: dict[str, Any], label: Callable[[str], str] = _same) -> ProductOptions:
        """Its options: the defaults, then ``given``, each checked (``None`` is a value: e.g. no mask).

        Raises
        ------
        InputError
            One line naming the option (by ``label``) that it does not take or whose value is invalid.
        """
        names = self.option_names()
        unknown = [k for k in given if k not in names]
        if unknown:
            raise InputError(f"the {self.name} product takes {', '.join(map(label, names)) or 'no options'}, "
                             f"not {', '.join(map(label, unknown))}")
        options = self.options(**given)
        for name in names:
            setattr(options, name, self.options.check_option(name, getattr(options, name), label(name)))
        if self.check is not None:
            self.check(options, label)
        return options

    def runner(self) -> Runner:
        """The function that makes it (imported where :attr:`run` names one)."""
        if callable(self.run):
            return self.run
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function)


_PRODUCTS: dict[str, Product] = {}


def register_product(product: Product) -> Product:
    """Add ``product`` under its name; returns it.

    Raises
    ------
    ValueError
        If another product already has that name (a programming error, not a user's).
    """
    known = _PRODUCTS.get(product.name)
    if known is not None and known != product:
        raise ValueError(f"a product named {product.name!r} is already registered")
    _PRODUCTS[product.name] = product
    return product


def unregister_product(name: str) -> None:
    """Remove the product ``name`` (tests that register one of their own)."""
    _PRODUCTS.pop(name, None)


def registered_products() -> list[Product]:
    """Every registered product, in registration order."""
    return list(_PRODUCTS.values())


def get_product(name: str) -> Product:
    """The registered product ``name``, or :class:`InputError` naming the known ones."""
    product = _PRODUCTS.get(name)
    if product is None:
        raise InputError(f"unknown product {name!r}; known: {', '.join(_PRODUCTS) or '(none)'}")
    return product


def choose_product(model: Any, name: str | None = None) -> Product:
    """The product ``name`` of ``model`` (its default, the first it declares, when ``None``).

    Raises
    ------
    InputError
        If ``model`` does not make ``name``: one line naming what it makes.
    """
    made = tuple(model.products)
    if not made:
        raise InputError(f"the {model.config.model} model makes no map of a section itself")
    if name is None:
        return get_product(made[0])
    if name not in made:
        get_product(name)  # an unknown name is told as such
        raise InputError(f"the {model.config.model} model makes {' and '.join(made)}, not {name}")
    return get_product(name)


def products_taking(names: list[str]) -> list[Product]:
    """The registered products that take every option of ``names``."""
    return [p for p in _PRODUCTS.values() if set(names) <= set(p.option_names())]


_SPOT_RUNNERS: dict[str, SpotRunner] = {}


def register_spots(name: str, run: SpotRunner) -> SpotRunner:
    """Make ``run`` how a model whose :attr:`~.trained_model.TrainedModel.spots_from` is ``name`` predicts spots.

    Returns ``run``. A new model that predicts spots its own way registers its function
    beside it, as it registers its products.

    Raises
    ------
    ValueError
        If another function is registered under ``name`` (a programming error, not a user's).
    """
    known = _SPOT_RUNNERS.get(name)
    if known is not None and known is not run:
        raise ValueError(f"a spot predictor named {name!r} is already registered")
    _SPOT_RUNNERS[name] = run
    return run


def unregister_spots(name: str) -> None:
    """Remove the spot predictor ``name`` (tests that register one of their own)."""
    _SPOT_RUNNERS.pop(name, None)


def spots_runner(model: Any) -> SpotRunner:
    """How ``model`` predicts spots: the function registered under its ``spots_from``.

    Raises
    ------
    InputError
        If none is registered under that name: one line naming the known ones.
    """
    run = _SPOT_RUNNERS.get(model.spots_from)
    if run is None:
        raise InputError(f"the {model.config.model} model predicts spots from {model.spots_from!r}, which no "
                         f"spot predictor is registered for; known: {', '.join(sorted(_SPOT_RUNNERS)) or '(none)'}")
    return run
