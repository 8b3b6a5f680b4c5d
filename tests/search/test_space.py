"""Search-space files: the shipped ones work, conditional sampling works, bad files fail clearly."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from cxr_tune.errors import UserError
from cxr_tune.search.space import SPACES_DIR, load_space
from cxr_tune.search.trial import TrialSettings, trial_hparams
from cxr_tune.train.model import build_model
from cxr_tune.train.trainer import Resources
from tests.conftest import call_cli

SETTINGS = TrialSettings(max_epochs=3, criterion="balanced_accuracy", min_sensitivity=0.0, seed=0, resources=Resources(), train_storage="/tmp")


def sample(space, n: int = 25) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, n_startup_trials=5))
    configs = []
    for _ in range(n):
        trial = study.ask()
        constants = space.sample(trial)
        configs.append({**trial.params, **constants})
        study.tell(trial, 0.5)
    return configs


@pytest.mark.parametrize("name", ["wide", "narrow", "smoke", "real"])
def test_shipped_spaces_sample_valid_buildable_models(name):
    space = load_space(name)
    for config in sample(space):
        hp = trial_hparams(config, SETTINGS)
        build_model(hp)
        if any(p.per_block for p in space.params):
            assert len(hp.block_filters) == hp.depth  # one width per sampled block, none beyond


def write(tmp_path, body: str):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_when_samples_a_parameter_only_under_its_condition(tmp_path):
    space = load_space(str(write(tmp_path, """
        params:
          optimizer: {type: categorical, choices: [adamw, sgd]}
          momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}
        """)))
    configs = sample(space, 20)
    assert all(("momentum" in c) == (c["optimizer"] == "sgd") for c in configs)
    assert {c["optimizer"] for c in configs} == {"adamw", "sgd"}


def test_fixed_values_reach_every_trial(tmp_path):
    space = load_space(str(write(tmp_path, """
        fixed: {image_size: 48, dropout: 0.25}
        params:
          lr: {type: logfloat, low: 1.0e-4, high: 1.0e-2}
        """)))
    assert all(c["image_size"] == 48 and c["dropout"] == 0.25 for c in sample(space, 5))


@pytest.mark.parametrize(("body", "key", "problem"), [
    ("params:\n  lr: {type: logfloat, low: 1.0e-4, high: 1.0e-2\n", "YAML syntax error", "line"),
    ("paramz: {}\n", "paramz", "unknown section"),
    ("params:\n  lr: {type: logfloat, low: 1.0e-4, high: 1.0e-2, scale: 2}\n", "params.lr.scale", "unknown key"),
    ("params:\n  learning_rate: {type: float, low: 0.1, high: 0.2}\n", "params.learning_rate", "unknown hyperparameter"),
    ("params:\n  dropout: {type: float, low: 0.5, high: 0.1}\n", "params.dropout", "low 0.5 > high 0.1"),
    ("params:\n  dropout: {type: beta, low: 0.1, high: 0.5}\n", "params.dropout.type", "unknown type 'beta'"),
    ("params:\n  batch_size: {type: categorical, choices: []}\n", "params.batch_size.choices", "non-empty list"),
    ("params:\n  lr: {type: logfloat, low: 0.0, high: 0.1}\n", "params.lr.low", "must be > 0 on a log scale"),
    ("params:\n  dropout: {type: float, low: 0.1, high: 1.5}\n", "params.dropout", "out of range"),
    ("fixed: {image_size: 32}\nparams:\n  depth: {type: int, low: 2, high: 7}\n", "params.depth", "below 1x1"),
    ("params:\n  filters: {type: int, low: 4, high: 8, per_block: depth}\n", "params.filters.per_block", "must be an int parameter listed before"),
    ("params:\n  depth: {type: int, low: 2, high: 3}\n  dropout: {type: float, low: 0, high: 0.2, per_block: depth}\n", "params.dropout.per_block", "only filters"),
    ("params:\n  momentum: {type: float, low: 0.8, high: 0.9, when: {optimizer: sgd}}\n", "params.momentum.when.optimizer", "listed before"),
    ("fixed: {optimizer: adam9}\n", "fixed.optimizer", "optimizer='adam9'"),
    # A bad fixed value named the section only ("fixed: depth='three' has the wrong type"), where params name the key.
    ("fixed: {image_size: 64, depth: three}\n", "fixed.depth", "depth='three' has the wrong type (expected int)"),
    ("fixed: {batch_size: 0}\n", "fixed.batch_size", "batch_size=0 is out of range"),
    # block_filters [16, 32] fails alone beside the default depth 4, but the problem is kernel_size's (it was blamed on block_filters)
    ("fixed: {depth: 2, block_filters: [16, 32], kernel_size: 4}\n", "fixed.kernel_size", "kernel_size=4 must be odd"),
    ("fixed: {colour: red}\n", "fixed.colour", "unknown hyperparameter"),
    ("search: {trials: 0}\n", "search.trials", "whole number >= 1"),
    ("search: {patience: 3}\n", "search.patience", "unknown setting"),
    ("search: {asha_rule: hyperband}\n", "search.asha_rule", "one of ray, optuna"),
    ("search: {max_epochs: 3, grace_period: 5}\n", "search.grace_period", "more than max_epochs"),
    # Above the epochs hyperparameter's range: every trial failed inside Ray, or the final fit after the whole search.
    ("search: {max_epochs: 5000}\n", "search.max_epochs", "epochs=5000 is out of range [1, 1000]"),
    ("search: {final_fit_top: 1, final_fit_epochs: 5000}\n", "search.final_fit_epochs", "epochs=5000 is out of range [1, 1000]"),
    ("params:\n  epochs: {type: int, low: 1, high: 9}\n", "params.epochs", "set by the search itself"),
    ("search: {final_fit_changes: 2}\n", "search.final_fit_changes", "must be a mapping"),
    ("search: {final_fit_changes: {convs: 2}}\n", "search.final_fit_changes.convs", "unknown hyperparameter"),
    ("search: {final_fit_changes: {convs_per_block: two}}\n", "search.final_fit_changes.convs_per_block", "two"),
    ("search: {final_fit_changes: {seed: 3}}\n", "search.final_fit_changes.seed", "set by the final fit itself"),
    ("fixed: {epochs: 3}\n", "fixed.epochs", "search.max_epochs"),
    ("fixed: {criterion: youden}\n", "fixed.criterion", "--select"),
    ("fixed: {min_sensitivity: 0.9}\n", "fixed.min_sensitivity", "--min-sensitivity"),
    # A space's seed replaced --seed in every trial, while experiment.json recorded --seed and trials.csv no seed.
    ("fixed: {seed: 7}\n", "fixed.seed", "set it with --seed"),
    ("params:\n  seed: {type: int, low: 0, high: 9}\n", "params.seed", "set it with --seed"),
    ("params:\n  batch_size: {type: int, low: 16, high: 64, log: 'false'}\n", "params.batch_size.log", "true or false"),
    ("params:\n  lr: {type: logfloat, low: 1.0e-4, high: 1.0e-2, log: false}\n", "params.lr.log", "use type: float"),
    ("params:\n  batch_size: {type: int, low: 16, high: 64, step: 0.5}\n", "params.batch_size.step", "whole number >= 1"),
    ("params:\n  batch_size: {type: int, low: 16, high: 64, step: true}\n", "params.batch_size.step", "whole number >= 1"),
    ("params:\n  dropout: {type: float, low: 0.0, high: 0.5, step: 0}\n", "params.dropout.step", "positive number"),
    ("params:\n  lr: {type: logfloat, low: 1.0e-4, high: 1.0e-2, step: 1.0e-4}\n", "params.lr.step", "log scale"),
    ("params:\n  batch_size: {type: float, low: 16, high: 64}\n", "params.batch_size.type", "takes whole numbers"),
    # A step that does not divide the range: Optuna lowered high and warned only into search.log.
    ("params:\n  dropout: {type: float, low: 0.0, high: 0.3, step: 0.2}\n", "params.dropout.step", "the last value sampled would be 0.2, not 0.3"),
    ("params:\n  batch_size: {type: int, low: 16, high: 40, step: 16}\n", "params.batch_size.step", "16 does not divide 16..40"),
    # Each of these was a traceback from deep inside the space's own checks, or (the last two) a space that never sampled momentum.
    ("fixed: {image_size: abc}\n", "fixed.image_size", "image_size='abc' has the wrong type"),
    ("params:\n  image_size: {type: categorical, choices: [abc]}\n", "params.image_size", "image_size='abc' has the wrong type"),
    # Text among numbers: the corners take these keys' smallest and largest value, which raised a TypeError traceback.
    ("params:\n  image_size: {type: categorical, choices: [32, 64x]}\n", "params.image_size", "image_size='64x' has the wrong type (expected int)"),
    ("fixed: {image_size: 64}\nparams:\n  depth: {type: categorical, choices: [2, '3']}\n", "params.depth", "depth='3' has the wrong type"),
    ("params:\n  width_growth: {type: categorical, choices: [1.5, '2']}\n", "params.width_growth", "width_growth='2' has the wrong type"),
    ("params:\n  filters: {type: categorical, choices: [8, wide]}\n", "params.filters", "filters='wide' has the wrong type"),
    ("params:\n  depth: {type: int, low: 2, high: 3}\n  filters: {type: categorical, choices: [4, 8], per_block: [depth]}\n",
     "params.filters.per_block", "must be the name of one int parameter"),
    ("params:\n  kernel_size: {type: int, low: 3, high: 100000000000000000000001}\n", "params.kernel_size", "out of range"),
    ("params:\n  optimizer: {type: categorical, choices: [adamw, sgd]}\n  momentum: {type: float, low: 0.8, high: 0.9, when: {optimizer: sgdd}}\n",
     "params.momentum.when.optimizer", "optimizer never takes 'sgdd' (it takes 'adamw', 'sgd'): momentum would never be sampled"),
    ("fixed: {optimizer: adamw}\nparams:\n  momentum: {type: float, low: 0.8, high: 0.9, when: {optimizer: sgd}}\n",
     "params.momentum.when.optimizer", "never be sampled"),
    # A condition on a value an int range never draws, or on a per-block parameter (drawn as filters_0, ...): accepted, and never met.
    ("fixed: {image_size: 64}\nparams:\n  depth: {type: int, low: 2, high: 5}\n  dropout: {type: float, low: 0.0, high: 0.3, when: {depth: 7}}\n",
     "params.dropout.when.depth", "depth never takes 7 (it takes 2..5): dropout would never be sampled"),
    ("params:\n  batch_size: {type: int, low: 16, high: 64, step: 16}\n  lr: {type: logfloat, low: 1.0e-4, high: 1.0e-2, when: {batch_size: [20, 2.5]}}\n",
     "params.lr.when.batch_size", "(it takes 16..64 in steps of 16)"),
    ("fixed: {image_size: 32}\nparams:\n  depth: {type: int, low: 2, high: 3}\n  filters: {type: categorical, choices: [4, 8], per_block: depth}\n"
     "  dropout: {type: float, low: 0.0, high: 0.3, when: {filters: 8}}\n", "params.dropout.when.filters", "is drawn once per block"),
    ("params:\n  depth: {type: int, low: 5, high: 6}\n  filters: {type: int, low: 64, high: 128}\n", "params.filters", "keep every block <= 2048"),
    # A torchvision network below 32 px failed inside Ray, after its trial had started.
    ("fixed: {image_size: 16, arch: resnet18}\n", "fixed", "arch resnet18 downsamples by 32; use image_size >= 32, not 16"),
    ("fixed: {image_size: 32, arch: resnet18, batch_size: 1}\n", "fixed", "arch resnet18 at image_size 32 ends in a 1x1 map, where BatchNorm cannot"),
    ("fixed: {depth: 2}\nparams:\n  image_size: {type: categorical, choices: [16, 32]}\n  arch: {type: categorical, choices: [cnn, densenet121]}\n",
     "params.arch", "arch densenet121 downsamples by 32; use image_size >= 32, not 16"),
    ("params:\n  depth: {type: logfloat, low: 2, high: 4}\n", "params.depth.type", "takes whole numbers"),
    ("params:\n  kernel_size: {type: int, low: 3, high: 5}\n", "params.kernel_size", "kernel_size=4 must be odd"),
    ("params:\n  image_size: {type: int, low: 64, high: 96}\n", "params.image_size", "categorical list"),
    ("fixed: {image_size: 64}\nparams:\n  depth: {type: categorical, choices: [2, 2.5]}\n  filters: {type: int, low: 8, high: 16, per_block: depth}\n",
     "params.filters.per_block", "whole numbers"),
    ("fixed: {image_size: 64}\nparams:\n  optimizer: {type: categorical, choices: [adamw, sgd]}\n  depth: {type: int, low: 2, high: 4, when: {optimizer: sgd}}\n"
     "  filters: {type: int, low: 8, high: 16, per_block: depth}\n", "params.filters.per_block", "sampled only when optimizer"),
    ("fixed: {image_size: 64, depth: 2}\nparams:\n  filters: {type: int, low: 0, high: 8, per_block: depth}\n", "params.filters", "must all be >= 1"),
    ("search: {final_fit_top: 1, final_fit_changes: {depth: 3}}\nparams:\n  depth: {type: int, low: 2, high: 3}\n"
     "  filters: {type: categorical, choices: [8, 16], per_block: depth}\n", "search.final_fit_changes.depth", "params.filters is searched per block"),
    ("search: {final_fit_top: 1, final_fit_changes: {filters: 64}}\nparams:\n  depth: {type: int, low: 2, high: 3}\n"
     "  filters: {type: categorical, choices: [8, 16], per_block: depth}\n", "search.final_fit_changes.filters", "would change nothing"),
    ("search: {final_fit_top: 1, final_fit_changes: {depth: 7}}\nparams:\n  image_size: {type: categorical, choices: [64, 128]}\n",
     "search.final_fit_changes", "depth 7 would shrink 64 px images below 1x1"),
    # YAML keeps a repeated key's last value: a second params: section dropped lr, a parameter listed twice kept its second range.
    ("params:\n  lr: {type: logfloat, low: 1.0e-3, high: 1.0e-2}\nparams:\n  dropout: {type: float, low: 0.0, high: 0.3}\n",
     "the key 'params' at line 3 repeats the one at line 1", "give each key once"),
    ("params:\n  lr: {type: logfloat, low: 1.0e-3, high: 1.0e-2}\n  dropout: {type: float, low: 0.0, high: 0.3}\n"
     "  lr: {type: logfloat, low: 1.0e-5, high: 1.0e-4}\n", "the key 'lr' at line 4 repeats the one at line 2", "YAML would keep only the last"),
    ("- just\n- a list\n", "must be a mapping", "list"),
    ("", "empty", "empty"),
])
def test_a_bad_space_file_names_the_file_the_key_and_the_problem(tmp_path, body, key, problem):
    path = write(tmp_path, body)
    with pytest.raises(UserError) as caught:
        load_space(str(path))
    message = str(caught.value)
    assert str(path) in message and key in message and problem in message
    assert "\n" not in message


def test_a_space_file_may_write_its_bounds_in_exponent_notation_without_a_dot(tmp_path):
    smoke = (SPACES_DIR / "smoke.yaml").read_text()
    assert "low: 1.0e-3, high: 5.0e-3" in smoke
    path = write(tmp_path, smoke.replace("low: 1.0e-3, high: 5.0e-3", "low: 1e-3, high: 5e-3"))
    for checked in (True, False):  # as a search starts, and as --resume reads the copy the experiment keeps
        [lr] = [param for param in load_space(str(path), checked=checked).params if param.name == "lr"]
        assert (lr.low, lr.high) == (0.001, 0.005)


def test_an_alias_or_a_huge_value_in_a_space_file_is_one_short_line(tmp_path):
    # Nine nested aliases make a 1 KB file a billion strings, which the error message below used to spell out.
    path = write(tmp_path, """\
        description:
          - &a [lol, lol, lol]
          - &b [*a, *a, *a]
        params:
          lr: {type: logfloat, low: *b, high: 1.0e-2}
        """)
    with pytest.raises(UserError, match=rf"^{path}: the alias \*a at line 3 is not accepted \(YAML aliases are refused\); write the value out$"):
        load_space(str(path))
    path = write(tmp_path, f"params:\n  lr: {{type: logfloat, low: [{', '.join(['lol'] * 5000)}], high: 1.0e-2}}\n")
    with pytest.raises(UserError, match=r"params.lr.low: must be a number, got \['lol', 'lol', .*\.\.\.\]") as caught:
        load_space(str(path))
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("checked", [True, False])
def test_a_space_file_nested_too_deeply_or_too_large_is_one_line(tmp_path, checked):
    path = write(tmp_path, "params: " + "[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(UserError, match=rf"^{path}: YAML syntax error: nested too deeply \(more than"):
        load_space(str(path), checked=checked)  # before: a RecursionError traceback
    path.write_text("# " + "x" * 2**20 + "\n")  # an 88 MB one took YAML over 200 s and 1.5 GB of memory
    with pytest.raises(UserError, match=rf"^search space file '{path}' is 1,048,579 bytes; a search space file is at most 1,048,576 \(1 MB; the shipped ones are a few KB\)$"):
        load_space(str(path), checked=checked)


@pytest.mark.parametrize("checked", [True, False])
def test_a_python_tag_in_a_space_file_is_refused_as_not_plain_yaml(tmp_path, checked):
    path = write(tmp_path, 'params: !!python/object/apply:os.system ["echo hi"]\n')
    with pytest.raises(UserError) as caught:  # before: "YAML syntax error ...: could not determine a constructor for the tag ..."
        load_space(str(path), checked=checked)
    assert str(caught.value) == f"{path}: the tag !!python/object/apply:os.system at line 1, column 9 is not allowed (plain YAML only); remove it"


def test_a_started_experiments_space_with_an_alias_or_a_repeated_key_is_read_as_it_ran(tmp_path):
    """The copy an experiment keeps ran under yaml.safe_load: the refusals added since must not lock its owner out of the results."""
    text = ("params:\n  dropout: &rate {type: float, low: 0.0, high: 0.3}\n  label_smoothing: *rate\n"
            "  lr: {type: logfloat, low: 1.0e-5, high: 1.0e-4}\n  lr: {type: logfloat, low: 1.0e-4, high: 1.0e-2}\n")
    path = write(tmp_path, text)
    with pytest.raises(UserError, match="the alias"):
        load_space(str(path))
    space = load_space(str(path), checked=False)
    assert {p.name: (p.low, p.high) for p in space.params} == {"dropout": (0.0, 0.3), "label_smoothing": (0.0, 0.3), "lr": (1.0e-4, 1.0e-2)}


def test_final_fit_changes_are_kept_as_written(tmp_path):
    path = write(tmp_path, "search: {final_fit_top: 1, final_fit_changes: {convs_per_block: 2}}\n")
    assert load_space(str(path)).settings.final_fit_changes == {"convs_per_block": 2}
    assert load_space("smoke").settings.final_fit_changes == {}


@pytest.mark.parametrize("path", sorted(SPACES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_space_loads(path):
    assert load_space(str(path)).params


def test_final_fit_changes_that_keep_searched_block_widths_load(tmp_path):
    path = write(tmp_path, """
        search: {final_fit_top: 2, final_fit_changes: {convs_per_block: 2, dropout: 0.2}}
        fixed: {image_size: 64}
        params:
          depth: {type: int, low: 2, high: 5}
          filters: {type: categorical, choices: [8, 16], per_block: depth}
        """)
    assert load_space(str(path)).settings.final_fit_changes == {"convs_per_block": 2, "dropout": 0.2}


def test_a_float_with_log_true_is_refused_for_a_new_search_and_read_as_it_ran_for_a_started_one(tmp_path):
    text = "fixed: {epochs: 12}\nparams:\n  lr: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}\n"
    with pytest.raises(UserError, match=r"params\.lr\.log: a float is sampled on a linear scale; use type: logfloat"):
        load_space(str(write(tmp_path, "params:\n  lr: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}\n")))
    with pytest.raises(UserError, match=r"fixed\.epochs: would be ignored"):
        load_space(str(write(tmp_path, text)))
    # An experiment started before these rules keeps its space.yaml: it is read, and samples as it did (the study holds linear draws).
    space = load_space(str(write(tmp_path, text)), checked=False)
    study = optuna.create_study()
    trial = study.ask()
    space.sample(trial)
    assert not trial.distributions["lr"].log and space.fixed["epochs"] == 12


def test_per_block_widths_share_the_condition_of_their_block_count(tmp_path):
    space = load_space(str(write(tmp_path, """
        fixed: {image_size: 64}
        params:
          optimizer: {type: categorical, choices: [adamw, sgd]}
          depth: {type: int, low: 2, high: 4, when: {optimizer: sgd}}
          filters: {type: int, low: 8, high: 16, per_block: depth, when: {optimizer: sgd}}
        """)))
    configs = sample(space, 20)
    assert {c["optimizer"] for c in configs} == {"adamw", "sgd"}
    for config in configs:
        assert len(trial_hparams(config, SETTINGS).widths) == config.get("depth", 4)


def test_image_sizes_are_the_searched_list_or_the_fixed_size(tmp_path):
    assert load_space("real").image_sizes() == [64, 96]
    assert load_space(str(write(tmp_path, "fixed: {image_size: 48}\n"))).image_sizes() == [48]


def test_an_unknown_space_name_lists_the_known_ones():
    with pytest.raises(UserError, match="no search space named 'huge'.*known: .*smoke.*wide"):
        load_space("huge")


def test_a_bare_space_name_is_the_packaged_space_whatever_the_working_folder_holds(tmp_path, monkeypatch):
    """Before: a folder or an empty file named 'smoke' in the working folder hid the packaged space ("search space file
    'smoke' is a folder"), and --space "" read the working folder ("'.' is a folder")."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").mkdir()
    (tmp_path / "narrow").write_text("")
    assert load_space("smoke").path == str(SPACES_DIR / "smoke.yaml")
    assert load_space("narrow").path == str(SPACES_DIR / "narrow.yaml")
    (tmp_path / "mine").write_text((SPACES_DIR / "smoke.yaml").read_text())
    assert load_space("mine").name == "mine"  # a file named without .yaml is still read, where no packaged space has its name
    with pytest.raises(UserError, match=r"^--space is empty; name a space in \S+ \(known: .*smoke.*\) or a .yaml file$"):
        load_space("")


def test_a_space_file_that_is_a_folder_or_cannot_be_read_is_one_line(tmp_path, monkeypatch):
    """Before: a folder was "does not exist", and a file without read permission a PermissionError traceback."""
    (tmp_path / "spaces.yaml").mkdir()
    with pytest.raises(UserError, match=r"search space file '\S+/spaces.yaml' is a folder; name a .yaml file"):
        load_space(str(tmp_path / "spaces.yaml"))
    locked = write(tmp_path, "params: {}\n")
    real_read = Path.read_text

    def denied(self, *args, **kwargs):  # what chmod 000 does for anyone but root
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(UserError, match=rf"search space file '{locked}' cannot be read: Permission denied"):
        load_space(str(locked))


def test_an_image_size_searched_under_a_condition_keeps_the_default_size_s_cache_for_the_other_trials(tmp_path):
    """Before: a trial that did not meet the condition trained at the default size, whose image cache was never built (it failed)."""
    space = load_space(str(write(tmp_path, """
        fixed: {depth: 2}
        params:
          block: {type: categorical, choices: [plain, residual]}
          image_size: {type: categorical, choices: [32, 48], when: {block: residual}}
        """)))
    drawn = {config.get("image_size", 128) for config in sample(space, 30)}
    assert drawn <= set(space.image_sizes()) and space.image_sizes() == [32, 48, 128]


@pytest.mark.parametrize("body", [
    # Each value was checked with the defaults (filters 32, growth 2, depth 4, 128 px), not with what the space samples.
    "fixed: {depth: 5}\nparams:\n  filters: {type: categorical, choices: [8, 16]}\n  width_growth: {type: float, low: 1.0, high: 3.0}\n",  # widest 1296
    "fixed: {depth: 2}\nparams:\n  arch: {type: categorical, choices: [cnn, resnet18]}\n"
    "  image_size: {type: categorical, choices: [16, 32], when: {arch: cnn}}\n",  # resnet18 trains at the default 128 px
    "fixed: {image_size: 64}\nparams:\n  depth: {type: int, low: 2, high: 5}\n  dropout: {type: float, low: 0.0, high: 0.3, when: {depth: [1, 5]}}\n"
    "  lr: {type: logfloat, low: 1.0e-4, high: 1.0e-2, when: {dropout: 0.15}}\n",  # a condition some draw of a range can meet
    "params:\n  dropout: {type: float, low: 0.0, high: 0.3, step: 0.1}\n  batch_size: {type: int, low: 16, high: 64, step: 16}\n",  # 0.3 - 0.0 is 3 steps in decimal, not in binary
    "fixed: {image_size: 256}\nparams:\n  depth: {type: int, low: 4, high: 8}\n  filters: {type: categorical, choices: [8, 16]}\n",  # widest 2048
    "params:\n  image_size: {type: categorical, choices: [256, 384]}\n  depth: {type: int, low: 4, high: 8}\n"
    "  filters: {type: categorical, choices: [8, 16]}\n",  # depth 8 on 256 px: 1x1
])
def test_a_space_whose_every_network_is_possible_loads(tmp_path, body):
    load_space(str(write(tmp_path, body)))


def test_a_space_or_params_file_on_object_storage_is_refused_by_its_full_uri():
    """Before: "search space file 's3:/exp/cfg/smoke2.yaml' does not exist" (Path() had eaten a slash), for a file that exists."""
    for module, flag, what in (("cxr_tune.search", "--space", "search space"), ("cxr_tune.train", "--params", "params")):
        done = call_cli(module, flag, "s3://exp/cfg/p.yaml")
        assert done.returncode == 2
        assert done.stderr == f"error: {what} file 's3://exp/cfg/p.yaml' must be a local file; copy it from object storage first (aws s3 cp s3://exp/cfg/p.yaml .)\n"
