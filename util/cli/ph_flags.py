"""The PH flags, declared once for PHdict.py and the training scripts: ``--filtration``, ``--gradient``/``-g``,
``--size_normalise`` and ``--ph_engine`` (names, choices and defaults here; each script gives its own help text,
since the flags act on different things there: the diagrams written, or PH computed in the loader)."""

from __future__ import annotations

import argparse

from util.ph.cubical import DEFAULT_ENGINE, DEFAULT_FILTRATION, ENGINES, FILTRATIONS


class OneOrSeveral(argparse.Action):
    """``nargs='+'`` that stores one value as itself (the common case, as recorded before) and several as a list."""

    unique = False  # drop repeated values (keeping the first of each)

    def __call__(self, parser, namespace, values, option_string=None):
        several = list(dict.fromkeys(values)) if self.unique else list(values)
        setattr(namespace, self.dest, values[0] if len(values) == 1 else several)


class OneOrSeveralUnique(OneOrSeveral):
    """:class:`OneOrSeveral` with repeated values dropped."""

    unique = True


PH_FLAGS = {
    'filtration': dict(choices=FILTRATIONS, default=DEFAULT_FILTRATION, nargs='+'),
    'gradient': dict(action='store_true', default=False),
    'size_normalise': dict(action='store_true', default=False),
    'ph_engine': dict(choices=ENGINES, default=DEFAULT_ENGINE),
}
SHORT = {'gradient': '-g'}


def add_ph_args(group, helps: dict, unique: bool = False) -> None:
    """Add the PH flags named in ``helps`` ({name: help text}, in the order they are listed) to an argparse parser
    or group; ``unique``: several ``--filtration`` values lose their repeats."""
    for name, text in helps.items():
        spec = dict(PH_FLAGS[name])
        if name == 'filtration':
            spec['action'] = OneOrSeveralUnique if unique else OneOrSeveral
        group.add_argument(f'--{name}', *([SHORT[name]] if name in SHORT else []), help=text, **spec)
