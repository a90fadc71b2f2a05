"""Learning approaches: what a dialogue model can be trained with, one module each, listed without torch.

An approach is a class in `cldg/approaches/<name>.py` decorated with `@register_approach("<name>")`:

    options    its options dataclass (TrainOptions and what its recipe needs; the stage that trains it
               inherits them and adds its input directories)
    recipe     "module:Class" of its training recipe (cldg.training.recipes), imported only to train
    command    the cldg stage that trains it; leave it out and the generic stage `cldg/stages/train.py`
               trains the approach as `cldg <name>-train` (TOML table [<name>_train]): it resolves `needs`
               (one `--<need>-dir` option each, default the latest), fingerprints (approach, options, inputs),
               calls the recipe's `setup`, fits with the Trainer and commits what the recipe's `finish`
               returns (the contract is in cldg/training/recipes/__init__.py)
    makes      the model artifact it writes (what `evaluate --model`, `chat` and `compare` take)
    needs      the artifacts it trains from
    revision   (optional, default 1; approaches the generic stage trains) raised when a fix changes what
               the same options train: fingerprints name options and inputs, not code, so without it an
               artifact trained before the fix would be reused; a revision above 1 joins the fingerprint.
               (A fix to a model is cldg.choices.MODEL_REVISIONS; a stage of its own bumps its SCHEMA.)
    docstring  its one-line description

So a baseline is one module here and its recipe: no stage module, no STAGES line, no pipeline entry.

The CLI (`cldg approaches`), `cldg run` (the models it evaluates) and `cldg compare` (runs named by
approach) read this registry; so do `cldg.model_artifacts` (which artifacts are models). Approach modules
import no torch.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Approach:
    name: str
    description: str
    options: type
    recipe: str
    command: str
    makes: str
    needs: tuple[str, ...]
    generic: bool = False  # trained by the generic stage (cldg/stages/train.py), not a stage of its own
    revision: int = 1

    def recipe_class(self) -> type:
        module, _, cls = self.recipe.partition(":")
        return getattr(importlib.import_module(module), cls)


_REGISTRY: dict[str, Approach] = {}


def register_approach(name: str):
    """Class decorator: register the approach `name` (see the module docstring for what the class holds)."""
    def register(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"approach {name!r} is registered twice")
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        command = getattr(cls, "command", None)
        if command is not None and getattr(cls, "revision", 1) != 1:
            raise ValueError(f"approach {name!r}: a revision only applies to approaches the generic stage trains; "
                             f"{command} fingerprints its own artifacts")
        _REGISTRY[name] = Approach(name, doc, cls.options, cls.recipe, command or f"{name}-train", cls.makes,
                                   tuple(cls.needs), generic=command is None, revision=getattr(cls, "revision", 1))
        return cls
    return register


@functools.cache
def _import_approach_modules() -> None:
    """Once per process: the stage list is built from the approach modules at start, and a module added to the
    checkout while a long `cldg run` goes on must not appear halfway through (its command would be in no stage
    list)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def registered() -> list[Approach]:
    """Every approach module imported, the approaches in name order (the stage registry's view: it cannot
    ask for the pipeline order, which it defines)."""
    _import_approach_modules()
    return sorted(_REGISTRY.values(), key=lambda a: a.name)


def approaches() -> list[Approach]:
    """Every registered approach, in the pipeline order of the stages that train them."""
    from cldg.stages import STAGES

    registered()
    order = [s.command for s in STAGES]
    return sorted(_REGISTRY.values(), key=lambda a: (order.index(a.command), a.name))


def get_approach(name: str) -> Approach:
    found = {a.name: a for a in approaches()}
    if name not in found:
        from cldg.errors import CldgError

        raise CldgError(f"unknown approach {name!r} (known: {', '.join(found)})")
    return found[name]


def model_stages() -> tuple[str, ...]:
    """The artifact directories that hold trained dialogue models ('reference', 'contrastive')."""
    return tuple(a.makes for a in approaches())


def model_name_stages() -> dict[str, str]:
    """Every name a trained model goes by in evaluate, chat, compare and [run] evaluate_models, and the model stage
    it names: the stage itself ('reference') and the approach that makes it ('mle' -> 'reference')."""
    return {a.makes: a.makes for a in approaches()} | {a.name: a.makes for a in approaches()}
