"""The fault matrix of util/ImageDatasetsDownloader.py.

Its own rows are here; rows run on several scripts are in tests/faultrows.py, the machinery
in tests/faultlib.py.
"""

import functools
import io
import os
import stat
import tarfile
import zipfile

import pytest

from tests import faultlib, faultrows  # noqa: F401 (faultrows registers the rows run on several scripts)
from tests.faultlib import case


def _evil_archive(path, fmt, kind, outside):
    target = str(outside / 'target.txt')
    if fmt == 'tar':
        with tarfile.open(path, 'w:gz') as tf:
            ok = tarfile.TarInfo('top/ok.txt')
            ok.size = 2
            tf.addfile(ok, io.BytesIO(b'ok'))
            if kind in ('dotdot', 'absolute'):
                info = tarfile.TarInfo('top/../../escaped.txt' if kind == 'dotdot' else str(outside / 'abs.txt'))
                info.size = 4
                tf.addfile(info, io.BytesIO(b'evil'))
            else:
                info = tarfile.TarInfo('top/evil')
                info.type = {'symlink': tarfile.SYMTYPE, 'hardlink': tarfile.LNKTYPE, 'device': tarfile.CHRTYPE}[kind]
                info.linkname = target if kind != 'device' else ''
                tf.addfile(info)
    else:
        with zipfile.ZipFile(path, 'w') as zf:
            zf.writestr('top/ok.txt', b'ok')
            if kind == 'symlink':
                info = zipfile.ZipInfo('top/evil')
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, target)
            else:
                zf.writestr(
                    zipfile.ZipInfo('top/../../escaped.txt' if kind == 'dotdot' else str(outside / 'abs.txt')), b'evil'
                )


ARCHIVE_ROWS = [
    ('tar', 'dotdot'),
    ('tar', 'absolute'),
    ('tar', 'symlink'),
    ('tar', 'hardlink'),
    ('tar', 'device'),
    ('zip', 'dotdot'),
    ('zip', 'absolute'),
    ('zip', 'symlink'),
]


def _archive_row(ctx, script, fmt, kind):
    from util.errors import UserError
    from util.io import download

    outside = ctx.tmp / 'outside'
    outside.mkdir()
    (outside / 'target.txt').write_text('secret')
    raw = ctx.tmp / 'raw'
    raw.mkdir()
    archive = raw / ('evil.tar.gz' if fmt == 'tar' else 'evil.zip')
    _evil_archive(archive, fmt, kind, outside)
    ctx.inputs(outside, archive)
    with pytest.raises(UserError) as err:
        download.safe_extract(str(archive), str(raw / 'evil'), progress=False)
    assert str(err.value).startswith(f'refusing {archive}: member ') and '\n' not in str(err.value)
    assert sorted(os.listdir(raw)) == [archive.name]  # nothing unpacked, not even a temp folder
    assert sorted(os.listdir(outside)) == ['target.txt'] and not (ctx.tmp / 'escaped.txt').exists()


for _fmt, _kind in ARCHIVE_ROWS:
    case(
        'downloader',
        f'archive member: {_kind} ({_fmt})',
        'refused before anything is written: UserError "refusing ARCHIVE: member NAME ..."; nothing outside touched',
    )(functools.partial(_archive_row, fmt=_fmt, kind=_kind))


data, test_fault = faultlib.data, faultlib.test_fault  # the matrix's fixture and test
pytest_generate_tests, ledger = faultlib.matrix('downloader')
