"""The fault matrix of util/ImageDatasetsDownloader.py.

Its own rows are here; rows run on several scripts are in tests/faultrows.py, the machinery
in tests/faultlib.py.
"""

import functools
import hashlib
import io
import json
import os
import socket
import stat
import tarfile
import threading
import zipfile

import numpy as np
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


@case(
    'downloader',
    'MedMNIST .npz: damaged member, checksum matches',
    'exit 2: "NPZ is damaged (Bad CRC-32 ...); delete it and run this again"; no .partial, no class folders',
)
def _medmnist_damaged_member(ctx, script):
    rng = np.random.default_rng(7)
    arrays = {}
    for split, n in (('train', 6), ('val', 3), ('test', 3)):
        arrays[f'{split}_images'] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f'{split}_labels'] = (np.arange(n) % 2).reshape(-1, 1).astype(np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # stored members: the flipped byte below decodes, only the member's CRC-32 fails
    blob = bytearray(buf.getvalue())
    blob[blob.index(b'\x93NUMPY', blob.index(b'val_images.npy')) + 200] ^= 0xFF
    raw = ctx.tmp / 'raw'
    raw.mkdir()
    npz = raw / 'pneumoniamnist.npz'
    npz.write_bytes(blob)
    entry = [faultlib.closed_port_url('/pneumoniamnist.npz'), npz.name, hashlib.md5(blob).hexdigest()]
    (ctx.tmp / 'sources.json').write_text(json.dumps({'pneumoniamnist': [entry]}))
    ctx.inputs(raw)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    argv = ['-d', 'pneumoniamnist', '--sources', ctx.tmp / 'sources.json', '--raw_file_path', raw, '-o', out]
    res = faultlib.run(script, *argv, '--no_progress')
    faultlib.expect_error(res, f'{npz} is damaged (Bad CRC-32', 'delete it and run this again')
    root = out / 'pneumoniamnist'  # train/ was finished before val's damage showed: kept; val/ left nothing
    assert sorted(os.listdir(root)) == ['.train.done', 'train'], sorted(os.listdir(root))


@case(
    'downloader',
    'download stalls after 1,000 bytes',
    'exit 2: "transfer broken after 1000 bytes (timed out); rerun to resume"; the .part keeps them, no final file',
)
def _stalled_download(ctx, script):
    from util.errors import UserError
    from util.io.download import network

    body = os.urandom(50_000)
    let_go = threading.Event()
    with socket.socket() as listener:
        listener.bind(('127.0.0.1', 0))
        listener.listen()

        def serve():
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n' % len(body) + body[:1000])
                let_go.wait(10)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        dest = ctx.tmp / 'raw' / 'f.bin'
        ctx.outputs(ctx.tmp / 'raw')
        try:
            with pytest.MonkeyPatch.context() as mp, pytest.raises(UserError) as err:
                mp.setattr(network, 'TIMEOUT_S', 0.3)
                mp.setenv('no_proxy', '127.0.0.1')
                url = f'http://127.0.0.1:{listener.getsockname()[1]}/f.bin'
                network.download_file(url, str(dest), hashlib.md5(body).hexdigest(), progress=False)
        finally:
            let_go.set()
            thread.join(10)
    assert 'transfer broken after 1000 bytes (timed out); rerun to resume' in str(err.value), err.value
    assert '\n' not in str(err.value)
    assert not dest.exists() and (ctx.tmp / 'raw' / 'f.bin.part').read_bytes() == body[:1000]


data, test_fault = faultlib.data, faultlib.test_fault  # the matrix's fixture and test
pytest_generate_tests, ledger = faultlib.matrix('downloader')
