"""Numeric flags: nan, inf and out-of-range values stop at parse time with exit status 2, in every CLI."""

from __future__ import annotations

import argparse
import re

import pytest

from cxr_tune.adapt import build_parser as adapt_parser
from cxr_tune.bench.__main__ import build_parser as bench_parser
from cxr_tune.cliargs import assignment, float_between, fraction, int_between, nonnegative_float, nonnegative_int, positive_float, positive_int
from cxr_tune.compare import build_parser as compare_parser
from cxr_tune.data.__main__ import build_parser as data_parser
from cxr_tune.export import build_parser as export_parser
from cxr_tune.predict import build_parser as predict_parser
from cxr_tune.search.__main__ import build_parser as search_parser
from cxr_tune.train.__main__ import build_parser as train_parser
from tests.conftest import call_cli


@pytest.mark.parametrize(("parse", "good", "bad"), [
    (positive_float, {"0.5": 0.5, "1e3": 1000.0}, ["0", "-1", "nan", "NaN", "inf", "-inf", "x", ""]),
    (nonnegative_float, {"0": 0.0, "2": 2.0}, ["-0.1", "nan", "inf"]),
    (fraction, {"0": 0.0, "1": 1.0, "0.95": 0.95}, ["1.5", "-0.1", "nan", "inf"]),
    (float_between(0.0, 0.9, low_open=True, high_open=True), {"0.15": 0.15}, ["0", "0.9", "nan"]),
    (positive_int, {"1": 1, "12": 12}, ["0", "-3", "1.5", "nan", "inf", "x"]),
    (nonnegative_int, {"0": 0, "7": 7}, ["-1", "nan"]),
    (int_between(2, 20), {"2": 2, "20": 20}, ["1", "21", "nan"]),
])
def test_helpers_accept_the_range_and_refuse_the_rest(parse, good, bad):
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_the_message_says_what_is_wanted():
    with pytest.raises(argparse.ArgumentTypeError, match="'nan' is not a finite number"):
        positive_float("nan")
    with pytest.raises(argparse.ArgumentTypeError, match="0 must be > 0"):
        positive_float("0")
    with pytest.raises(argparse.ArgumentTypeError, match="1.5 must be >= 0 and <= 1"):
        fraction("1.5")
    with pytest.raises(argparse.ArgumentTypeError, match="21 must be between 2 and 20"):
        int_between(2, 20)("21")
    with pytest.raises(argparse.ArgumentTypeError, match="0 must be at least 1"):
        positive_int("0")


def test_a_number_in_exponent_notation_is_a_number_written_any_way_python_writes_one():
    """PyYAML reads YAML 1.1, where ``1e-3`` (no dot) and ``1.0e3`` (no sign) are strings: ``--set lr=1e-3`` was refused as
    "the wrong type (expected float)", and so was ``low: 1e-3`` in a space file."""
    for text, number in (("1e-3", 0.001), ("1.0e3", 1000.0), ("-2E+2", -200.0), (".5e-1", 0.05), ("1.0e-3", 0.001)):
        assert assignment(f"lr={text}") == ("lr", number) and isinstance(assignment(f"lr={text}")[1], float), text
    assert assignment("epochs=12") == ("epochs", 12) and assignment("name=e3") == ("name", "e3")  # ints and words as before


def test_settings_read_their_values_as_a_params_file_would_and_refuse_what_is_not_one():
    assert assignment("mixup=0.2") == ("mixup", 0.2) and assignment(" epochs =3") == ("epochs", 3)
    assert assignment("class_weighting=balanced") == ("class_weighting", "balanced")
    for text in ("mixup", "=0.2", "x=[1,"):
        with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE|not a number"):
            assignment(text)
    # nine nested aliases on one line would be a billion strings: refused before any is built
    with pytest.raises(argparse.ArgumentTypeError, match=r"the alias \*a at line 1 is not accepted \(YAML aliases are refused\)"):
        assignment("lr=[&a [lol, lol], &b [*a, *a]]")


SEARCH = [
    ("--time-budget", "nan"), ("--time-budget", "-5"), ("--time-budget", "inf"), ("--job-budget", "0"), ("--job-budget", "nan"),
    ("--min-sensitivity", "nan"), ("--min-sensitivity", "1.5"),
    ("--cpus-per-worker", "nan"), ("--cpus-per-worker", "0"),
    ("--gpus-per-worker", "nan"), ("--gpus-per-worker", "-1"),
    ("--trials", "0"), ("--max-epochs", "0"), ("--max-epochs", "1001"), ("--concurrency", "0"), ("--workers-per-trial", "0"), ("--seed", "-1"),
    ("--val-fraction", "nan"), ("--val-fraction", "0"), ("--synthetic-n", "19"), ("--split-seed", "-1"),
]
TRAIN = [("--workers", "0"), ("--cpus-per-worker", "nan"), ("--cpus-per-worker", "-1"), ("--cv", "1"), ("--cv", "21"),
         ("--val-fraction", "inf"), ("--synthetic-n", "0")]


@pytest.mark.parametrize(("parser", "prefix", "flag", "value"), [
    *[(search_parser, [], f, v) for f, v in SEARCH],
    *[(train_parser, [], f, v) for f, v in TRAIN],
    (data_parser, ["prepare"], "--image-size", "8"),
    (data_parser, ["prepare"], "--image-size", "2000"),
    (data_parser, ["inspect"], "--val-fraction", "nan"),
    (data_parser, ["inspect"], "--synthetic-n", "0"),
    (data_parser, ["synthesize", "out"], "--n", "19"),  # fewer cannot be split by patient
    (data_parser, ["synthesize", "out"], "--seed", "-1"),
    (export_parser, ["experiment"], "--ensemble", "0"),
    (export_parser, ["experiment"], "--tta", "0"),
    (export_parser, ["experiment"], "--tta", "nan"),
    (bench_parser, ["tta", "model"], "--views", "10"),  # the views export --tta knows
    (bench_parser, ["data"], "--image-size", "nan"),
    (bench_parser, ["data"], "--full-res-images", "-1"),
    (bench_parser, ["train"], "--epochs", "0"),
    (bench_parser, ["search"], "--trials", "0"),
    (bench_parser, ["ablation", "experiment"], "--ensemble", "0"),
    (bench_parser, ["epochs", "experiment"], "--vary", "mixup"),
    (train_parser, [], "--set", "epochs"),
])
def test_every_cli_refuses_bad_numbers_while_parsing(capsys, parser, prefix, flag, value):
    with pytest.raises(SystemExit) as caught:
        parser().parse_args([*prefix, f"{flag}={value}"])
    assert caught.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {flag}: " in last and value in last.split(f"argument {flag}: ", 1)[1]


def test_no_numeric_flag_is_left_as_plain_int_or_float():
    """Plain ``type=float`` lets nan through; every numeric flag uses a checked type."""
    def actions(parser: argparse.ArgumentParser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from actions(sub)
            else:
                yield action

    for build in (search_parser, train_parser, data_parser, export_parser, predict_parser, adapt_parser, compare_parser, bench_parser):
        plain = [a.option_strings for a in actions(build()) if a.type in (int, float)]
        assert plain == [], f"{build.__module__}: {plain}"


def test_a_bad_number_stops_the_cli_with_usage_and_status_2():
    done = call_cli("cxr_tune.data", "inspect", "--val-fraction", "nan")
    assert done.returncode == 2
    assert done.stderr.startswith("usage:") and done.stderr.strip().splitlines()[-1].endswith("argument --val-fraction: 'nan' is not a finite number")


def test_synthetic_n_zero_is_not_the_default(tmp_path):
    from cxr_tune.data.sources import load_source
    from cxr_tune.errors import UserError

    with pytest.raises(UserError, match="--n 0 is too small"):  # before: silently 1500 images
        load_source(None, str(tmp_path), synthetic_n=0)


def test_a_bad_precision_stops_train_search_and_bench_with_usage_and_status_2():
    for command in (("cxr_tune.train",), ("cxr_tune.search",), ("cxr_tune.bench", "train")):
        done = call_cli(*command, "--precision", "fp8")
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert done.returncode == 2 and len(errors) == 1 and "--precision" in errors[0] and "fp8" in errors[0], done.stderr


def test_no_help_page_shows_the_docstrings_markup():
    for build in (search_parser, train_parser, data_parser, export_parser, predict_parser, adapt_parser, compare_parser, bench_parser):
        text = build().format_help()
        assert "``" not in text and ":mod:`" not in text and ":func:`" not in text and "**" not in text, build.__module__
        assert not re.search(r"\(cxr_tune\.[\w.]+\)", text), (build.__module__, re.findall(r".*\(cxr_tune\.[\w.]+\).*", text))


@pytest.mark.parametrize("build", [adapt_parser, bench_parser, compare_parser, data_parser, export_parser, predict_parser, search_parser, train_parser])
def test_every_commands_help_ends_with_its_exit_statuses_as_the_readme_tables_them(build, monkeypatch):
    """Before: only predict's --help named a status (130, 143); a scheduler's author had to collect 0/1/2/130/141/143 from
    the README's paragraphs. Now every command's --help, its subcommands' too, ends with the same line, and the README tables them.
    The six commands whose help keeps its own line breaks (search, train, export, predict, adapt, compare) printed it as one
    line of 200 characters; it is wrapped to an 80-column terminal as the rest of the help is."""
    from cxr_tune.cliargs import EXIT_STATUSES
    from tests.conftest import ROOT

    monkeypatch.setenv("COLUMNS", "80")  # argparse's width: the terminal's
    parser = build()
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for each in [parser, *(sub for action in subcommands for sub in action.choices.values())]:
        text = each.format_help()
        assert " ".join(text.split()).endswith(EXIT_STATUSES), each.prog
        epilog = text.rstrip().split("\n\n")[-1].splitlines()
        assert epilog[0].startswith("Exit status:") and max(map(len, epilog)) <= 80, (each.prog, epilog)
    readme = (ROOT / "README.md").read_text()
    assert "### Exit status" in readme
    for status in ("0", "1", "2", "130", "141", "143"):
        assert re.search(rf"^\| {status} \| ", readme, re.M), status
