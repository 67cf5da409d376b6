"""The original's flags are read with their meaning there or refused; no parser accepts an abbreviation."""

import argparse
import ast
import contextlib
import importlib
import io

import pytest

from tests.faultlib import _PARSERS, _calls, _kw, _python_files


def _parse(parser, argv):
    """(namespace or None, exit status, stderr) of ``parser.parse_args(argv)``."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parser.parse_args(argv), 0, err.getvalue()
        except SystemExit as e:
            return None, e.code, err.getvalue()


def _parser(name):
    return importlib.import_module(_PARSERS[name][0]).get_args_parser()


def _positional(name):
    return ['images'] if name == 'predict' else ['folder'] if name == 'PHdict' else []


@pytest.mark.parametrize('name', list(_PARSERS))
def test_original_flags_never_misread(name):
    """Every flag of the original is read with its meaning there, or refused with one line naming ours."""
    table = _PARSERS[name][1]
    for flag, meaning in table.items():
        parser = _parser(name)
        ours = parser._option_string_actions.get(flag)
        if ours is not None and ours.help != argparse.SUPPRESS:
            assert ours.dest == meaning, f"{name}: {flag} is our --{ours.dest}, the original's {meaning}"
            continue
        ns, rc, err = _parse(parser, _positional(name) + [flag, '1'])
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith(f'error: {flag} '), (name, flag, err)
        assert lines[0].split(': ', 2)[-1].strip(), lines[0]  # and what to use instead


@pytest.mark.parametrize('name', list(_PARSERS))
def test_no_abbreviation_is_accepted(name):
    """A proper prefix of an option (``-m`` of ``-ml``, ``--max`` of ``--max_life``) never sets that option."""
    parser = _parser(name)
    options = [s for a in parser._actions for s in a.option_strings]
    prefixes = {s[:k] for s in options for k in range(2, len(s)) if s[:k] not in options and s[:k] not in ('--',)}
    assert prefixes
    for p in sorted(prefixes):
        ns, rc, err = _parse(_parser(name), _positional(name) + [p, '1'])
        assert rc == 2 and 'Traceback' not in err, (name, p, ns)


def test_conflicting_original_meanings_refused():
    """Where the original's versions gave a flag two readings, the value shape decides (-pc alone: the
    switch; -pc P: --prob_colour) and anything else stops the run (exit 2); see tests/test_compat.py."""
    pt = _parser('pretraining')
    ns, rc, err = _parse(pt, ['-pc', '0.5'])  # the later -pc PROB (--prob_colour)
    assert rc == 0 and ns.prob_colour == 0.5 and ns.precomputed is False
    ns, rc, err = _parse(_parser('pretraining'), ['-ml', '50', '40'])  # H0 then H1, as the later README's -ml 80 60
    assert rc == 0 and ns.max_life == [50.0, 40.0]
    ns, rc, err = _parse(_parser('pretraining'), ['-ml', '50', '40', '30'])  # a third value has no meaning
    assert rc == 2 and '-ml' in err
    ns, rc, err = _parse(_parser('PHdict'), ['folder', '-n', '50', '50', '50'])  # the first -n took 3 bins
    assert rc == 2 and '-n' in err


def test_every_parser_disallows_abbreviations():
    """Each argparse parser in the project (scripts, util, bench) is a StrictArgumentParser(allow_abbrev=False)."""
    missing, found = [], 0
    for path, tree in _python_files(include_tests=False):
        for name, call, _ in _calls(tree):
            if name.split('.')[-1] in ('ArgumentParser', 'StrictArgumentParser') and path != 'util/cli/strict_args.py':
                found += 1
                kw = _kw(call, 'allow_abbrev')
                if not name.endswith('StrictArgumentParser') or not (
                    isinstance(kw, ast.Constant) and kw.value is False
                ):
                    missing.append(f"{path}:{call.lineno}")
    assert found >= 14 and not missing, f"parsers without StrictArgumentParser(allow_abbrev=False): {missing}"
