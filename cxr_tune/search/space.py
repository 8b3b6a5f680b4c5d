"""Search-space files: parse, check, and turn into an Optuna define-by-run function.

A space file (``search_spaces/*.yaml``) has four sections::

    description: one line on what the space is for
    search:                       # how long and how hard to search
      trials: 16                  # Tune samples
      max_epochs: 10              # epochs of a trial that ASHA never stops
      grace_period: 2             # ASHA: epochs before a trial can be stopped
      reduction_factor: 3         # ASHA: keep the best 1/3 at each rung
      asha_rule: ray              # ASHA's promotion rule: ray (ASHAScheduler) or optuna (SuccessiveHalvingPruner)
      startup_trials: 6           # TPE: trials that end before the model takes over (the first 6 + trials at once - 1 are random)
      ensemble: 1                 # export the best K trials as one model averaging them
      final_fit_top: 0            # then train the best K configurations again (0: no final fit) ...
      final_fit_seeds: 2          # ... with this many new seeds each ...
      final_fit_epochs: 0         # ... for this many epochs (0: max_epochs) ...
      final_fit_changes: {}       # ... with these hyperparameters set in every run, e.g. {convs_per_block: 2}
    fixed:                        # hyperparameters every trial shares
      image_size: 64
    params:                       # what is searched, in sampling order
      depth: {type: int, low: 2, high: 5}
      filters: {type: int, low: 8, high: 64, log: true, per_block: depth}   # filters_0..filters_{depth-1}
      lr: {type: logfloat, low: 1.0e-4, high: 3.0e-3}
      momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}
      class_weighting: {type: categorical, choices: [none, balanced, 2.0]}

Types: ``int`` (``low``, ``high``, optional whole ``step`` or ``log``), ``float`` (``low``, ``high``,
optional ``step`` or ``log``; not for a whole-number hyperparameter), ``logfloat`` (``low`` > 0,
``high``), ``categorical`` (``choices``; the only type ``image_size`` takes: each size is one image
cache); a ``step`` divides ``high - low``. Conditions: ``per_block: P`` repeats the parameter once
per block up to the sampled value of the int parameter ``P`` (named ``NAME_0``, ``NAME_1``, ...;
``P`` must be sampled whenever the parameter is); ``when: {P: value or [values]}`` samples it only
when the parameter ``P`` (not a per-block one) took one of those values, one of which ``P`` can take.
Every name must be a hyperparameter (see :class:`cxr_tune.train.hparams.HParams`)
other than the ones the search sets itself (epochs, criterion, min_sensitivity, seed); every value a
trial or a final-fit run can get must make a valid one. A bad file stops with one line naming the
file, the key and the problem.
"""

from __future__ import annotations

import re
import reprlib  # a value in an error message is shown short: a space file's value can be any size
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from cxr_tune import storage
from cxr_tune.errors import UserError
from cxr_tune.train.hparams import HParams, HParamsError, check_type
from cxr_tune.yamlfile import load_mapping

# The named spaces ship inside the package: in a checkout cxr_tune/spaces is a symlink to the
# top-level search_spaces/ (resolved, so messages name that folder); a built wheel holds copies.
SPACES_DIR = Path(str(resources.files("cxr_tune") / "spaces")).resolve()
ASHA_RULES = {"ray": "Ray's", "optuna": "Optuna's"}  # search.asha_rule: whose promotion rule ASHA follows
TYPES = ("int", "float", "logfloat", "categorical")
_SECTIONS = ("description", "search", "fixed", "params")
_PARAM_KEYS = {"type", "low", "high", "step", "log", "choices", "per_block", "when"}
_NOT_SEARCHABLE = {"epochs", "criterion", "min_sensitivity", "block_filters"}  # set by the search itself
# What trial_hparams sets in every trial over the space's values, and where a user sets it instead.
_SET_BY_SEARCH = {
    "epochs": "search.max_epochs (search.final_fit_epochs for the final fit)",
    "criterion": "the command's --select flag",
    "min_sensitivity": "the command's --min-sensitivity flag",
}
# A space's seed would replace --seed in every trial (trial.trial_hparams takes a config's own seed over it)
# while experiment.json records --seed and the trial table no seed.
_SEED_PROBLEM = "would replace the command's --seed (which experiment.json records) in every trial; set it with --seed"
_BLOCK_SHAPE = ("filters", "width_growth")  # what per-block widths override (HParams.widths)
_SHAPE = (*_BLOCK_SHAPE, "depth")  # what sets a CNN's block widths when no per-block widths do
_EVERY_VALUE_UP_TO = 1024  # int ranges this short are checked value by value: kernel_size 3..5 holds an even 4


@dataclass(frozen=True)
class SearchSettings:
    """The ``search:`` section; CLI flags override trials and max_epochs."""

    trials: int = 16
    max_epochs: int = 10
    grace_period: int = 2
    reduction_factor: int = 3
    # TPE draws at random until this many trials have ended (Optuna counts only finished trials, COMPLETE or PRUNED),
    # so with k trials at once the first startup_trials + k - 1 are random (more if some fail).
    startup_trials: int = 6
    # Who decides at a rung: "ray", Ray's ASHAScheduler (a trial goes on when it reaches the
    # (1 - 1/rf) percentile of the objectives recorded there before it), or "optuna", Optuna's
    # SuccessiveHalvingPruner (when it is among the best max(1, n // rf) of the n trials there).
    asha_rule: str = "ray"
    ensemble: int = 1  # export the best K trials as one averaging model
    # The final-fit stage (0: none): after the search, the final_fit_top best configurations at the
    # selected image size are trained again with final_fit_seeds new seeds each for final_fit_epochs
    # epochs (0: max_epochs), and their last epochs are exported as one averaging model.
    final_fit_top: int = 0
    final_fit_seeds: int = 2
    final_fit_epochs: int = 0
    # Hyperparameters the final fit sets in every configuration it trains: the search judges cheap
    # networks, the final fit trains the costlier one (e.g. {convs_per_block: 2}) that only its
    # schedule can afford. A mapping of HParams fields; none of the ones the final fit sets itself.
    final_fit_changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    per_block: str | None = None
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def suggest(self, trial: Any, name: str) -> Any:
        """Draw this parameter from an Optuna trial under ``name``."""
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.type == "logfloat")

    @property
    def values(self) -> tuple[Any, ...]:
        """The values to check before any trial runs: a categorical's choices, every value of a short
        int range (one bad value inside fails the trials that draw it), else the extremes."""
        if self.type == "categorical":
            return self.choices
        if self.type == "int":
            step = int(self.step or 1)
            if (int(self.high) - int(self.low)) // step < _EVERY_VALUE_UP_TO:  # not len(range): it overflows on a huge high
                return tuple(range(int(self.low), int(self.high) + 1, step))
        return (self.low, self.high)


@dataclass(frozen=True)
class Space:
    """A parsed, checked search-space file."""

    name: str
    path: str
    description: str
    settings: SearchSettings
    fixed: dict[str, Any]
    params: tuple[Param, ...]

    def sample(self, trial: Any) -> dict[str, Any]:
        """Optuna define-by-run: draw every active parameter; return the fixed values as constants."""
        drawn: dict[str, Any] = {}
        for param in self.params:
            if any(drawn.get(key, self.fixed.get(key)) not in allowed for key, allowed in param.when.items()):
                continue
            if param.per_block:
                for i in range(int(drawn.get(param.per_block, self.fixed.get(param.per_block)))):
                    drawn[f"{param.name}_{i}"] = param.suggest(trial, f"{param.name}_{i}")
            else:
                drawn[param.name] = param.suggest(trial, param.name)
        return dict(self.fixed)

    def image_sizes(self) -> list[int]:
        """Every image size a trial can use: each is one image cache, so a searched size is a list.

        >>> load_space("wide").image_sizes()
        [64]
        """
        default = int(self.fixed.get("image_size", HParams().image_size))
        for param in self.params:
            if param.name == "image_size":
                if param.type != "categorical":
                    raise UserError(f"{self.path}: params.image_size: use a categorical list of sizes (each size is one image cache)")
                sizes = [int(v) for v in param.choices]
                # Drawn only under a condition (when:), a trial that does not meet it trains at the default size.
                return sorted({*sizes, default}) if param.when else sizes
        return [default]


class SpaceSampler:
    """Picklable define-by-run callable for ``OptunaSearch`` (Tune pickles the searcher to resume)."""

    def __init__(self, space: Space) -> None:
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        return self.space.sample(trial)


def resolve_space_path(name_or_path: str) -> Path | str:
    """``wide`` → ``search_spaces/wide.yaml``; a path is used as it is (a URI as text, for load_mapping to refuse).

    A bare name (no ``/``, no ``.yaml``/``.yml``) of a packaged space is that space, whatever the working folder holds:
    a folder or stray file named ``smoke`` there hid it."""
    if storage.is_uri(name_or_path):
        return name_or_path
    known = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
    if not name_or_path:
        raise UserError(f"--space is empty; name a space in {SPACES_DIR} (known: {known}) or a .yaml file")
    candidate = Path(name_or_path)
    named = SPACES_DIR / f"{name_or_path}.yaml"
    bare = "/" not in name_or_path and candidate.suffix not in (".yaml", ".yml")
    if bare and named.is_file():
        return named
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate  # load_mapping says what is wrong with it (missing, a folder, unreadable)
    raise UserError(f"no search space named '{name_or_path}' in {SPACES_DIR}; known: {known} (or pass a .yaml path)")


def load_space(name_or_path: str, *, checked: bool = True) -> Space:
    """Read and check a space file; :class:`UserError` names the file, key and problem.

    ``checked=False`` reads the copy a started experiment keeps (``space.yaml``): it ran under the
    rules of its day, so only what reading it needs is checked, and a rule added since (a value no
    trial may draw, a setting the search overrides) does not lock its owner out of their results."""
    path = resolve_space_path(name_or_path)
    raw = load_mapping(path, "search space", strict=checked)

    def fail(key: str, problem: str) -> UserError:
        return UserError(f"{path}: {key}: {problem}")

    for key in raw:
        if key not in _SECTIONS:
            raise fail(key, f"unknown section; use {', '.join(_SECTIONS)}")
    settings = _settings(raw.get("search") or {}, fail)
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise fail("fixed", "must be a mapping of hyperparameter: value")
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict):
        raise fail("params", "must be a mapping of hyperparameter: {type: ..., ...}")
    known = {f.name: str(f.type) for f in fields(HParams)}  # name: its annotation ("int", "float", ...)
    for key in fixed:
        if key not in known:
            raise fail(f"fixed.{key}", "unknown hyperparameter")
        if key in _SET_BY_SEARCH and checked:
            raise fail(f"fixed.{key}", f"would be ignored: the search sets it in every trial; set it with {_SET_BY_SEARCH[key]}")
        if key == "seed" and checked:
            raise fail("fixed.seed", _SEED_PROBLEM)
    params = tuple(_param(name, spec, known, fail, checked) for name, spec in params_raw.items())
    _check_links(params, fixed, fail, checked)
    space = Space(path.stem, str(path), str(raw.get("description", "")), settings, dict(fixed), params)
    if checked:
        _check_epochs(space.settings, fail)
        _check_final_fit_changes(space, fail)
        _check_corners(space, fail)  # before image_sizes: it names the key of a value no trial could use (an image size 'abc')
        space.image_sizes()
    return space


def _settings(raw: Any, fail: Any) -> SearchSettings:
    if not isinstance(raw, dict):
        raise fail("search", "must be a mapping")
    allowed = {f.name for f in fields(SearchSettings)}
    values = {}
    for key, value in raw.items():
        if key not in allowed:
            raise fail(f"search.{key}", f"unknown setting; use {', '.join(sorted(allowed))}")
        if key == "asha_rule":
            if value not in ASHA_RULES:
                raise fail("search.asha_rule", f"must be one of {', '.join(ASHA_RULES)}, got {reprlib.repr(value)}")
            values[key] = value
            continue
        if key == "final_fit_changes":
            values[key] = _final_fit_changes(value, fail)
            continue
        least = 2 if key == "reduction_factor" else 0 if key in ("startup_trials", "final_fit_top", "final_fit_epochs") else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise fail(f"search.{key}", f"must be a whole number >= {least}, got {reprlib.repr(value)}")
        values[key] = value
    settings = SearchSettings(**values)
    if settings.grace_period > settings.max_epochs:
        raise fail("search.grace_period", f"{settings.grace_period} is more than max_epochs {settings.max_epochs}")
    return settings


def _final_fit_changes(raw: Any, fail: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise fail("search.final_fit_changes", "must be a mapping of hyperparameter: value, e.g. {convs_per_block: 2}")
    for key, value in raw.items():
        if key in _NOT_SEARCHABLE | {"seed"}:
            raise fail(f"search.final_fit_changes.{key}", "is set by the final fit itself (seeds, final_fit_epochs) or by the command's flags")
        try:
            HParams.from_config({key: value})
        except HParamsError as exc:
            raise fail(f"search.final_fit_changes.{key}", str(exc)) from None
    return dict(raw)


def _param(name: str, spec: Any, known: dict[str, str], fail: Any, checked: bool = True) -> Param:
    key = f"params.{name}"
    if name not in known:
        raise fail(key, "unknown hyperparameter")
    if name in _NOT_SEARCHABLE:
        raise fail(key, "is set by the search itself (epochs from max_epochs; criterion and min_sensitivity from --select and --min-sensitivity); use per_block for block widths")
    if name == "seed" and checked:
        raise fail(key, _SEED_PROBLEM)
    if not isinstance(spec, dict):
        raise fail(key, "must be a mapping like {type: float, low: 0.0, high: 0.5}")
    unknown = set(spec) - _PARAM_KEYS
    if unknown:
        raise fail(f"{key}.{sorted(unknown)[0]}", f"unknown key; use {', '.join(sorted(_PARAM_KEYS))}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise fail(f"{key}.type", f"unknown type {reprlib.repr(kind)}; use {', '.join(TYPES)}")
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise fail(f"{key}.when", "must be a mapping like {optimizer: sgd}")
    when = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in when.items()}
    per_block = spec.get("per_block")
    if per_block is not None and not isinstance(per_block, str):
        raise fail(f"{key}.per_block", f"must be the name of one int parameter, like per_block: depth, got {reprlib.repr(per_block)}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise fail(f"{key}.choices", "must be a non-empty list")
        if any(k in spec for k in ("low", "high", "step", "log")):
            raise fail(key, "a categorical parameter takes choices, not low/high/step/log")
        return Param(name, kind, choices=tuple(choices), per_block=per_block, when=when)
    if "choices" in spec:
        raise fail(f"{key}.choices", f"only categorical parameters take choices; {name} is {kind}")
    for bound in ("low", "high"):
        value = spec.get(bound)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise fail(f"{key}.{bound}", f"must be a number, got {reprlib.repr(value)}")
    low, high = spec["low"], spec["high"]
    if low > high:
        raise fail(key, f"low {low} > high {high}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise fail(key, f"an int parameter needs whole-number bounds, got {low}..{high}")
    if not checked:  # as read before these checks: an int's log honoured, a float's read but linear
        return Param(name, kind, low=low, high=high, step=spec.get("step"), log=bool(spec.get("log", False)), per_block=per_block, when=when)
    if kind in ("float", "logfloat") and known[name] == "int":
        raise fail(f"{key}.type", f"{name} takes whole numbers; use type: int (or categorical), not {kind}")
    log = _log(spec, kind, f"{key}.log", fail)
    if log and low <= 0:
        raise fail(f"{key}.low", f"must be > 0 on a log scale, got {low}")
    step = spec.get("step")
    if step is not None:
        _check_step(step, kind, log, (low, high), f"{key}.step", fail)
    return Param(name, kind, low=low, high=high, step=step, log=log, per_block=per_block, when=when)


def _log(spec: dict[str, Any], kind: str, key: str, fail: Any) -> bool:
    """Whether the parameter is sampled on a log scale; only a boolean says so (YAML's 'false' is a string)."""
    log = spec.get("log", kind == "logfloat")
    if not isinstance(log, bool):
        raise fail(key, f"must be true or false, got {reprlib.repr(log)}")
    if kind == "logfloat" and not log:
        raise fail(key, "a logfloat is always on a log scale; use type: float for a linear one")
    if kind == "float" and log:  # a float is sampled linearly: say so, rather than change what older searches sampled
        raise fail(key, "a float is sampled on a linear scale; use type: logfloat for a log one")
    return log


def _check_step(step: Any, kind: str, log: bool, bounds: tuple[float, float], key: str, fail: Any) -> None:
    """Optuna needs an int's step whole (int(0.5) is 0, which fails the first trial) and no step on a log scale,
    and it lowers a high that the step does not reach (0..0.3 step 0.2 samples 0 and 0.2), warning only into search.log."""
    if log:
        raise fail(key, "cannot be combined with a log scale")
    number = isinstance(step, (int, float)) and not isinstance(step, bool)
    if kind == "int" and not (number and step >= 1 and float(step).is_integer()):
        raise fail(key, f"an int parameter's step must be a whole number >= 1, got {reprlib.repr(step)}")
    if not (number and step > 0):
        raise fail(key, f"must be a positive number, got {reprlib.repr(step)}")
    low, high = (Decimal(str(bound)) for bound in bounds)  # as Optuna tests it: 0..0.3 step 0.1 is whole in decimal, not in binary
    if (high - low) % Decimal(str(step)):
        last = low + (high - low) // Decimal(str(step)) * Decimal(str(step))
        raise fail(key, f"{step} does not divide {bounds[0]}..{bounds[1]}: the last value sampled would be {last}, not {bounds[1]}; "
                        "make high - low a multiple of the step")


def _check_links(params: tuple[Param, ...], fixed: dict[str, Any], fail: Any, checked: bool = True) -> None:
    """``per_block`` and ``when`` must refer to a parameter sampled earlier (or fixed)."""
    seen: dict[str, Param] = {}
    for param in params:
        key = f"params.{param.name}"
        if param.name in fixed:
            raise fail(key, "is both fixed and searched")
        if param.per_block is not None:
            if param.name != "filters":
                raise fail(f"{key}.per_block", "only filters can vary per block (as filters_0, filters_1, ...)")
            source = seen.get(param.per_block)
            if source is None and param.per_block not in fixed:
                raise fail(f"{key}.per_block", f"'{param.per_block}' must be an int parameter listed before {param.name} (or fixed)")
            if source is not None and checked:
                _check_block_count(param, source, fail)
        for other, allowed in param.when.items():
            if other not in seen and other not in fixed:
                raise fail(f"{key}.when.{other}", f"'{other}' must be a parameter listed before {param.name} (or fixed)")
            source = seen.get(other)
            if checked and source is not None and source.per_block:
                raise fail(f"{key}.when.{other}", f"'{other}' is drawn once per block (as {other}_0, {other}_1, ...), never as {other}: "
                           f"{param.name} would never be sampled")
            if checked and not any(_takes(source, value) if source else value == fixed[other] for value in allowed):
                possible = _describe(source) if source else repr(fixed[other])
                raise fail(f"{key}.when.{other}", f"{other} never takes {', '.join(map(repr, allowed))} (it takes {possible}): "
                           f"{param.name} would never be sampled")
        seen[param.name] = param


def _takes(param: Param, value: Any) -> bool:
    """Whether ``param`` can draw ``value``: one of a categorical's choices, or a number in its range (on its step)."""
    if param.type == "categorical":
        return value in param.choices
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not param.low <= value <= param.high:
        return False
    if param.type == "int" and not float(value).is_integer():
        return False
    return not param.step or (Decimal(str(value)) - Decimal(str(param.low))) % Decimal(str(param.step)) == 0


def _describe(param: Param) -> str:
    """What ``param`` draws, for a message: its choices, or its range."""
    if param.type == "categorical":
        return ", ".join(map(repr, param.choices))
    return f"{param.low}..{param.high}" + (f" in steps of {param.step}" if param.step else "")


def _check_block_count(param: Param, source: Param, fail: Any) -> None:
    """Space.sample draws one value per block, so the block count is a whole number drawn whenever ``param`` is."""
    key = f"params.{param.name}.per_block"
    whole = source.type == "int" or source.type == "categorical" and all(isinstance(c, int) and not isinstance(c, bool) for c in source.choices)
    if not whole:
        raise fail(key, f"'{source.name}' must take whole numbers")
    for other, allowed in source.when.items():
        if other not in param.when or not all(v in allowed for v in param.when[other]):
            raise fail(key, f"'{source.name}' is sampled only when {other} is one of {list(allowed)}; give {param.name} that when condition too")


def _check_epochs(settings: SearchSettings, fail: Any) -> None:
    """``max_epochs`` and ``final_fit_epochs`` become every trial's and final-fit run's ``epochs``: checked against that
    hyperparameter's own range here, or 5000 failed every trial inside Ray, or the final fit after the whole search."""
    for key in ("max_epochs", "final_fit_epochs"):
        value = getattr(settings, key)
        if value:  # final_fit_epochs 0: the search's max_epochs
            try:
                HParams.from_config({"epochs": value})
            except HParamsError as exc:
                raise fail(f"search.{key}", str(exc)) from None


def _check_final_fit_changes(space: Space, fail: Any) -> None:
    """Fixed or searched per-block widths set every block's width and the block count: a change to
    the width rule would do nothing, and one to depth would leave the widths one block short or over."""
    widths = next((f"params.{p.name} is searched per block" for p in space.params if p.per_block), None)
    if widths is None and "block_filters" in space.fixed:
        widths = "fixed.block_filters gives every width"
    for key in space.settings.final_fit_changes:
        if widths and key == "depth":
            raise fail("search.final_fit_changes.depth", f"cannot change the number of blocks: {widths}")
        if widths and key in _BLOCK_SHAPE:
            raise fail(f"search.final_fit_changes.{key}", f"would change nothing: {widths}, which overrides {key}")


def _check_corners(space: Space, fail: Any) -> None:
    """Every configuration of :func:`_corners` must make a valid HParams and model, as sampled and
    with the final fit's changes: a bad one would fail its trials, or the final fit, inside Ray."""
    changes = space.settings.final_fit_changes
    for param in space.params:  # _corners takes the least and greatest of these: text among numbers cannot be ordered
        if param.name in (*_SHAPE, "image_size"):
            for value in param.values:
                try:
                    check_type(param.name, value)
                except HParamsError as exc:
                    raise fail(f"params.{param.name}", str(exc)) from None
    for key, config in _corners(space):
        problem = _problem(config)
        if problem:
            raise fail(_fixed_key(space.fixed, problem) if key == "fixed" else key, problem)
        problem = _problem({**config, **changes}) if changes else None
        if problem:
            raise fail("search.final_fit_changes", f"in a configuration the space samples, {problem}")


def _fixed_key(fixed: dict[str, Any], problem: str) -> str:
    """The key to blame for fixed values that make no trial (``problem``): of those that make none alone (``fixed.depth``,
    as params name theirs), the one the problem names (``block_filters: [16, 32]`` fails alone beside the default depth,
    but "kernel_size=4 must be odd" is kernel_size's), else the first; else the section (values that fail only together,
    as a torchvision arch on too small an image)."""
    alone = [name for name, value in fixed.items() if _problem({name: value})]
    named = [name for name in alone if re.search(rf"\b{re.escape(name)}\b", problem)]
    return f"fixed.{(named or alone)[0]}" if alone else "fixed"


def _corners(space: Space) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key to blame, configuration): the fixed values; each value of :attr:`Param.values` with them,
    per-block widths at every block count; the deepest network and each architecture on the smallest searched image; the widest network.
    A generator, so each is built only after the ones before it passed."""
    fixed = space.fixed
    yield "fixed", dict(fixed)
    searched = {p.name for p in space.params}
    # Each value with the smallest network on the largest image the space samples, not the defaults (filters 32, growth
    # 2, depth 4, 128 px): a deep or fast-growing value is checked against what it can meet; the widest network and the
    # deepest on the smallest image have corners of their own.
    whole = {p.name for p in space.params if not p.per_block}
    base = {**{name: min(_values(space, name)) for name in _SHAPE if name in whole},
            **({"image_size": max(_values(space, "image_size"))} if "image_size" in whole else {}), **fixed}
    for param in space.params:
        key = f"params.{param.name}"
        for value in param.values:
            if not param.per_block:
                yield key, {**base, param.name: value}
                continue
            for blocks in _values(space, param.per_block):
                yield key, {**base, param.per_block: blocks, **{f"{param.name}_{i}": value for i in range(int(blocks))}}
    if {"depth", "image_size"} <= searched:
        yield "params.depth", {**base, "depth": max(_values(space, "depth")), "image_size": min(_values(space, "image_size"))}
    if {"arch", "image_size"} <= searched:  # each network on the smallest image it can get (torchvision's downsample by 32)
        sized_for = next(p for p in space.params if p.name == "image_size").when.get("arch")
        for arch in _values(space, "arch"):
            if sized_for is None or arch in sized_for:  # else it trains at the default size
                yield "params.arch", {**base, "arch": arch, "image_size": min(_values(space, "image_size"))}
    shape = [name for name in _SHAPE if name in searched]
    if shape and not any(p.per_block for p in space.params):  # the widest network: its last block's width
        yield f"params.{shape[0]}", {**base, **{name: max(_values(space, name)) for name in _SHAPE}, **fixed}


def _problem(config: dict[str, Any]) -> str | None:
    """Why ``config`` cannot be a trial's network, or None."""
    from cxr_tune.train.model import TORCHVISION_MIN_SIZE, max_depth, training_problem  # torch: not for --help and flag errors, which import this module

    try:
        hp = HParams.from_config(config)
    except HParamsError as exc:
        return str(exc)
    if hp.arch != "cnn" and hp.image_size < TORCHVISION_MIN_SIZE:
        return f"arch {hp.arch} downsamples by {TORCHVISION_MIN_SIZE}; use image_size >= {TORCHVISION_MIN_SIZE}, not {hp.image_size}"
    if hp.depth > max_depth(hp.image_size):
        return f"depth {hp.depth} would shrink {hp.image_size} px images below 1x1; keep depth <= {max_depth(hp.image_size)}"
    return training_problem(hp)


def _values(space: Space, name: str) -> tuple[Any, ...]:
    """What ``name`` takes: a searched parameter's :attr:`Param.values`, else its fixed value or default."""
    for param in space.params:
        if param.name == name:
            return param.values
    return (space.fixed.get(name, getattr(HParams(), name)),)
