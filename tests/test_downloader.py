"""Tests of util/io/download/ and util/ImageDatasetsDownloader.py.

Small archives in the published formats are built in tmp_path and served by a loopback HTTP server
(with Range support, or ignoring it); nothing goes to the internet.
"""

import gzip
import hashlib
import http.server
import io
import json
import os
import pickle
import re
import socket
import stat
import struct
import tarfile
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from util.errors import UserError
from util.io import download as dl
from util.io.download import archives, converters

SCRIPT = 'util/ImageDatasetsDownloader.py'


def md5(data):
    return hashlib.md5(data).hexdigest()


# ----------------------------------------------------------------------------------------------------
# loopback server
# ----------------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        rng = self.headers.get('Range')
        srv.requests.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and not srv.ignore_range:
            start = int(re.match(r'bytes=(\d+)-', rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header('Content-Range', f'bytes */{len(data)}')
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            self.send_response(206)
            self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.path in srv.cut_once:  # announce everything, send half, hang up
            srv.cut_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path in srv.stall_once:  # send 1,000 bytes, then nothing until the test lets go
            srv.stall_once.discard(self.path)
            self.wfile.write(body[:1000])
            self.wfile.flush()
            srv.release.wait(10)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv('no_proxy', '127.0.0.1,localhost')
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    srv.files, srv.requests, srv.ignore_range, srv.cut_once = {}, [], False, set()
    srv.stall_once, srv.release = set(), threading.Event()
    srv.url = lambda path: f'http://127.0.0.1:{srv.server_address[1]}{path}'
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def closed_port_url(path='/x.bin'):
    """A loopback URL with nothing listening."""
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return f'http://127.0.0.1:{port}{path}'


def serve(server, files):
    """Serve {filename: bytes} under /d/; return a source list [(url, filename, md5)]."""
    out = []
    for name, data in files.items():
        server.files['/d/' + name] = data
        out.append((server.url('/d/' + name), name, md5(data)))
    return out


# ----------------------------------------------------------------------------------------------------
# archives in the published formats
# ----------------------------------------------------------------------------------------------------

_RECONSTRUCT = np.zeros(1, np.uint8).__reduce__()[0]


class _Py2Pickler(pickle._Pickler):
    """Writes pickles like CIFAR's python-2 cPickle files: bytes as BINSTRING, numpy.core globals."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack('<i', len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b'numpy.core.multiarray\n_reconstruct\n')
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def py2_pickle(obj):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def tar_bytes(members, mode='w:gz'):
    """members: list of (name, bytes) for files, (name, None) for folders."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def make_cifar(variant, rng, n_train=8, n_test=4):
    """(archive bytes, class names, {'train': (N,32,32,3) uint8, 'val': ...}, {'train': labels, ...})."""
    names = [b'apple', b'aquarium_fish', b'bee'] if variant == 'CIFAR100' else [b'airplane', b'automobile']
    label_key = b'fine_labels' if variant == 'CIFAR100' else b'labels'

    def batch(n, offset):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(i + offset) % len(names) for i in range(n)]
        d = {
            b'batch_label': b'batch',
            b'data': data,
            label_key: labels,
            b'filenames': [b'img_%d.png' % i for i in range(n)],
        }
        if variant == 'CIFAR100':
            d[b'coarse_labels'] = [0] * n
        return d

    if variant == 'CIFAR100':
        folder = 'cifar-100-python'
        train = [batch(n_train, 0)]
        files = [('meta', {b'fine_label_names': names, b'coarse_label_names': [b'fruit']}), ('train', train[0])]
    else:
        folder = 'cifar-10-batches-py'
        train = [batch(2, i) for i in range(5)]
        files = [('batches.meta', {b'label_names': names, b'num_cases_per_batch': 2})]
        files += [(f'data_batch_{i + 1}', b) for i, b in enumerate(train)]
    test = batch(n_test, 1)
    files.append(('test' if variant == 'CIFAR100' else 'test_batch', test))
    archive = tar_bytes([(folder, None)] + [(f'{folder}/{n}', py2_pickle(o)) for n, o in files])
    to_img = lambda d: d[b'data'].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # noqa: E731
    images = {'train': np.concatenate([to_img(b) for b in train]), 'val': to_img(test)}
    labels = {'train': np.concatenate([b[label_key] for b in train]), 'val': np.array(test[label_key])}
    return archive, [n.decode() for n in names], images, labels


def idx_gz(arr):
    head = bytes([0, 0, 8, arr.ndim]) + struct.pack('>' + 'i' * arr.ndim, *arr.shape)
    return gzip.compress(head + arr.astype(np.uint8).tobytes())


def make_mnist(rng, n_train=12, n_test=10):
    images = {
        'train': rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        'val': rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
    }
    labels = {'train': np.arange(n_train, dtype=np.uint8) % 10, 'val': (np.arange(n_test, dtype=np.uint8) + 3) % 10}
    files = {}
    for split, prefix in (('train', 'train'), ('val', 't10k')):
        files[f'{prefix}-images-idx3-ubyte.gz'] = idx_gz(images[split])
        files[f'{prefix}-labels-idx1-ubyte.gz'] = idx_gz(labels[split])
    return files, images, labels


def jpeg(rng, size=16):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format='JPEG')
    return buf.getvalue()


def png(rng, size=12):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, format='PNG')
    return buf.getvalue()


def count_tree(root):
    """{class: sorted file names} under root (a split folder)."""
    return {c: sorted(os.listdir(os.path.join(root, c))) for c in sorted(os.listdir(root))}


# ----------------------------------------------------------------------------------------------------
# download: resume, ranges, failures
# ----------------------------------------------------------------------------------------------------


def test_resume_partial_file_with_range(server, tmp_path):
    data = os.urandom(200_000)
    server.files['/big.bin'] = data
    dest = tmp_path / 'raw' / 'big.bin'
    dest.parent.mkdir()
    (tmp_path / 'raw' / 'big.bin.part').write_bytes(data[:100_000])
    dl.download_file(server.url('/big.bin'), str(dest), md5(data), progress=False)
    assert server.requests == [('/big.bin', 'bytes=100000-')]
    assert dest.read_bytes() == data
    assert not (tmp_path / 'raw' / 'big.bin.part').exists()


def test_server_ignoring_range_restarts(server, tmp_path):
    data = os.urandom(50_000)
    server.files['/big.bin'] = data
    server.ignore_range = True
    (tmp_path / 'big.bin.part').write_bytes(data[:20_000])
    dl.download_file(server.url('/big.bin'), str(tmp_path / 'big.bin'), md5(data), progress=False)
    assert server.requests == [('/big.bin', 'bytes=20000-')]
    assert (tmp_path / 'big.bin').read_bytes() == data  # not the 20 kB prefix twice


def test_complete_part_answered_416_is_verified(server, tmp_path):
    data = os.urandom(10_000)
    server.files['/f.bin'] = data
    (tmp_path / 'f.bin.part').write_bytes(data)
    dl.download_file(server.url('/f.bin'), str(tmp_path / 'f.bin'), md5(data), progress=False)
    assert server.requests == [('/f.bin', 'bytes=10000-')]
    assert (tmp_path / 'f.bin').read_bytes() == data


def test_corrupt_partial_file_is_downloaded_again(server, tmp_path):
    data = os.urandom(30_000)
    server.files['/f.bin'] = data
    (tmp_path / 'f.bin.part').write_bytes(b'\0' * 1000)  # wrong bytes from some earlier attempt
    dl.download_file(server.url('/f.bin'), str(tmp_path / 'f.bin'), md5(data), progress=False)
    assert server.requests == [('/f.bin', 'bytes=1000-'), ('/f.bin', None)]
    assert (tmp_path / 'f.bin').read_bytes() == data


def test_broken_connection_then_resume(server, tmp_path):
    data = os.urandom(80_000)
    server.files['/f.bin'] = data
    server.cut_once.add('/f.bin')
    dest = str(tmp_path / 'f.bin')
    with pytest.raises(UserError, match='rerun to resume') as err:
        dl.download_file(server.url('/f.bin'), dest, md5(data), progress=False)
    assert server.url('/f.bin') in str(err.value) and '\n' not in str(err.value)
    assert not os.path.exists(dest)
    assert os.path.getsize(dest + '.part') == 40_000
    dl.download_file(server.url('/f.bin'), dest, md5(data), progress=False)
    assert server.requests[-1] == ('/f.bin', 'bytes=40000-')
    assert open(dest, 'rb').read() == data


def test_stalled_transfer_names_and_keeps_the_bytes_received(server, tmp_path, monkeypatch):
    from util.io.download import network

    monkeypatch.setattr(network, 'TIMEOUT_S', 0.3)
    data = os.urandom(80_000)
    server.files['/f.bin'] = data
    server.stall_once.add('/f.bin')
    dest = str(tmp_path / 'f.bin')
    with pytest.raises(UserError, match=r'transfer broken after 1000 bytes \(timed out\); rerun to resume'):
        dl.download_file(server.url('/f.bin'), dest, md5(data), progress=False)
    server.release.set()
    assert not os.path.exists(dest) and open(dest + '.part', 'rb').read() == data[:1000]
    dl.download_file(server.url('/f.bin'), dest, md5(data), progress=False)
    assert server.requests[-1] == ('/f.bin', 'bytes=1000-') and open(dest, 'rb').read() == data


def test_mirrors_tried_in_order(server, tmp_path):
    data = b'mirror data' * 100
    server.files['/f.bin'] = data
    dead = closed_port_url('/f.bin')
    dl.download_file([dead, server.url('/f.bin')], str(tmp_path / 'f.bin'), md5(data), progress=False)
    assert (tmp_path / 'f.bin').read_bytes() == data


def test_http_404_names_url(server, tmp_path):
    with pytest.raises(UserError, match='HTTP 404') as err:
        dl.download_file(server.url('/missing.bin'), str(tmp_path / 'missing.bin'), md5(b''), progress=False)
    assert server.url('/missing.bin') in str(err.value)
    assert '--raw_file_path' in str(err.value)
    assert not (tmp_path / 'missing.bin').exists()


def test_checksum_mismatch_keeps_bad_file(server, tmp_path):
    server.files['/f.bin'] = b'tampered'
    dest = tmp_path / 'f.bin'
    with pytest.raises(UserError, match='not the published') as err:
        dl.download_file(server.url('/f.bin'), str(dest), md5(b'original'), progress=False)
    assert '\n' not in str(err.value)
    assert not dest.exists() and not (tmp_path / 'f.bin.part').exists()
    assert (tmp_path / 'f.bin.bad').read_bytes() == b'tampered'
    # sha256 checksums are accepted too
    server.files['/g.bin'] = b'good'
    dl.download_file(server.url('/g.bin'), str(tmp_path / 'g.bin'), hashlib.sha256(b'good').hexdigest(), progress=False)
    assert dl.verify_checksum(str(tmp_path / 'g.bin'), md5(b'good'))


def test_sources_validation():
    with pytest.raises(UserError, match='plain file name'):
        dl.normalize_sources([('http://x/y', '../evil.tar', md5(b''))], 'x')
    with pytest.raises(UserError, match='checksum'):
        dl.normalize_sources([('http://x/y', 'y.tar', None)], 'x')
    src = dl.normalize_sources([(['http://a/y', 'http://b/y'], 'y.tar', md5(b'').upper())], 'x')
    assert src[0].urls == ('http://a/y', 'http://b/y') and src[0].checksum == md5(b'')
    # the built-in table is well formed
    for name, entries in dl.SOURCES.items():
        assert dl.normalize_sources(entries, name)


# ----------------------------------------------------------------------------------------------------
# safe extraction
# ----------------------------------------------------------------------------------------------------


def _evil_tar(kind, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz') as tf:
        ok = tarfile.TarInfo('top/ok.txt')
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b'ok'))
        if kind in ('dotdot', 'absolute'):
            name = '../escaped.txt' if kind == 'dotdot' else str(tmp_path / 'outside' / 'abs.txt')
            info = tarfile.TarInfo(name)
            info.size = 4
            tf.addfile(info, io.BytesIO(b'evil'))
        else:
            info = tarfile.TarInfo('top/evil')
            info.type = {
                'symlink': tarfile.SYMTYPE,
                'hardlink': tarfile.LNKTYPE,
                'fifo': tarfile.FIFOTYPE,
                'device': tarfile.CHRTYPE,
            }[kind]
            info.linkname = str(tmp_path / 'outside' / 'target.txt') if kind in ('symlink', 'hardlink') else ''
            tf.addfile(info)
    return buf.getvalue()


def _evil_zip(kind, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as zf:
        zf.writestr('top/ok.txt', b'ok')
        if kind == 'symlink':
            info = zipfile.ZipInfo('top/evil')
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, str(tmp_path / 'outside' / 'target.txt'))
        else:
            name = '../escaped.txt' if kind == 'dotdot' else str(tmp_path / 'outside' / 'abs.txt')
            zf.writestr(zipfile.ZipInfo(name), b'evil')
    return buf.getvalue()


@pytest.mark.parametrize(
    'fmt,kind',
    [
        ('tar', 'dotdot'),
        ('tar', 'absolute'),
        ('tar', 'symlink'),
        ('tar', 'hardlink'),
        ('tar', 'fifo'),
        ('tar', 'device'),
        ('zip', 'dotdot'),
        ('zip', 'absolute'),
        ('zip', 'symlink'),
    ],
)
def test_malicious_archive_refused_and_nothing_written(tmp_path, fmt, kind):
    (tmp_path / 'outside').mkdir()
    (tmp_path / 'outside' / 'target.txt').write_text('secret')
    work = tmp_path / 'work' / 'raw'
    work.mkdir(parents=True)
    archive = work / ('evil.tar.gz' if fmt == 'tar' else 'evil.zip')
    archive.write_bytes(_evil_tar(kind, tmp_path) if fmt == 'tar' else _evil_zip(kind, tmp_path))
    dest = work / 'evil'
    with pytest.raises(UserError, match="refusing .*member '") as err:
        dl.safe_extract(str(archive), str(dest), progress=False)
    assert '\n' not in str(err.value)
    assert not dest.exists()
    assert sorted(os.listdir(work)) == [archive.name]  # not even a temporary folder
    assert sorted(os.listdir(tmp_path / 'outside')) == ['target.txt']
    assert (tmp_path / 'outside' / 'target.txt').read_text() == 'secret'
    assert not (tmp_path / 'work' / 'escaped.txt').exists()


def test_safe_extract_writes_plain_files(tmp_path):
    archive = tmp_path / 'a.zip'
    archive.write_bytes(zip_bytes([('top/', b''), ('top/x/1.txt', b'one'), ('./top/2.txt', b'two')]))
    out = dl.safe_extract(str(archive), str(tmp_path / 'out'), progress=False)
    assert (tmp_path / 'out' / 'top' / 'x' / '1.txt').read_bytes() == b'one'
    assert (tmp_path / 'out' / 'top' / '2.txt').read_bytes() == b'two'
    with pytest.raises(UserError, match='already exists'):
        dl.safe_extract(str(archive), out, progress=False)


# ----------------------------------------------------------------------------------------------------
# CIFAR pickles
# ----------------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


def test_restricted_unpickler_refuses_code(tmp_path):
    target = tmp_path / 'pwned.txt'
    with pytest.raises(UserError, match="global .*open.* is not allowed"):
        dl.restricted_loads(pickle.dumps({'data': _Evil(str(target))}, protocol=2), 'evil.pkl')
    assert not target.exists()
    # what CIFAR needs still loads: numpy arrays, lists, dicts, python-2 strings
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    out = dl.restricted_loads(py2_pickle({b'data': arr, b'labels': [1, 2]}))
    assert out['labels'] == [1, 2] and np.array_equal(out['data'], arr) and out['data'].dtype == np.uint8


def test_hostile_pickle_in_verified_archive_is_refused(server, tmp_path):
    target = tmp_path / 'pwned.txt'
    archive = tar_bytes([('cifar-100-python/meta', pickle.dumps(_Evil(str(target)), protocol=2))])
    sources = {'CIFAR100': serve(server, {'cifar-100-python.tar.gz': archive})}
    with pytest.raises(UserError, match='refusing to read'):
        dl.download_dataset('CIFAR100', str(tmp_path / 'raw'), str(tmp_path / 'data'), sources, progress=False)
    assert not target.exists()


@pytest.mark.parametrize('variant', ['CIFAR100', 'CIFAR10'])
def test_cifar_end_to_end(server, tmp_path, variant):
    rng = np.random.default_rng(0)
    filename = 'cifar-100-python.tar.gz' if variant == 'CIFAR100' else 'cifar-10-python.tar.gz'
    archive, names, images, labels = make_cifar(variant, rng)
    sources = {variant: serve(server, {filename: archive})}
    raw, data = str(tmp_path / 'raw'), str(tmp_path / 'data')
    result = dl.download_dataset(variant, raw, data, sources, progress=False)
    root = tmp_path / 'data' / variant
    for split in ('train', 'val'):
        tree = count_tree(root / split)
        assert sorted(tree) == sorted(names)
        n = len(labels[split])
        assert result[split] == {c: int(np.sum(labels[split] == i)) for i, c in enumerate(names)}
        assert sum(len(v) for v in tree.values()) == n
        for i in range(n):
            path = root / split / names[labels[split][i]] / f'{i:05d}.png'
            with Image.open(path) as im:
                assert im.mode == 'RGB'
                assert np.array_equal(np.asarray(im), images[split][i])
    assert json.loads((root / '.val.done').read_text())['images'] == len(labels['val'])
    assert not (root / 'test').exists()
    assert os.path.exists(os.path.join(raw, filename))  # archive kept, not unpacked
    # a rerun does nothing: no request, no rewrite
    n_requests = len(server.requests)
    again = dl.download_dataset(variant, raw, data, sources, progress=False)
    assert again['train'] is None and again['val'] is None and len(server.requests) == n_requests


def test_checksum_mismatch_refused_before_unpickling(server, tmp_path, monkeypatch):
    archive, *_ = make_cifar('CIFAR100', np.random.default_rng(1))
    calls = []
    # each replaced where it is looked up: converters reads CIFAR through archives.open_archive/restricted_loads
    monkeypatch.setattr(archives, 'restricted_loads', lambda *a, **k: calls.append('unpickle'))
    monkeypatch.setattr(converters, 'read_cifar', lambda *a, **k: calls.append('convert'))
    monkeypatch.setattr(archives, 'RestrictedUnpickler', lambda *a, **k: calls.append('unpickler'))
    monkeypatch.setattr(archives, 'open_archive', lambda *a, **k: calls.append('open'))
    server.files['/d/cifar-100-python.tar.gz'] = archive
    sources = {'CIFAR100': [(server.url('/d/cifar-100-python.tar.gz'), 'cifar-100-python.tar.gz', md5(archive + b'x'))]}
    raw, data = tmp_path / 'raw', tmp_path / 'data'
    with pytest.raises(UserError, match='not the published') as err:
        dl.download_dataset('CIFAR100', str(raw), str(data), sources, progress=False)
    assert calls == []
    assert str(raw / 'cifar-100-python.tar.gz.bad') in str(err.value)
    assert sorted(os.listdir(raw)) == ['cifar-100-python.tar.gz.bad']
    assert not (data / 'CIFAR100' / 'train').exists()
    # the same archive placed by hand with the wrong checksum is refused too (and not opened)
    (raw / 'cifar-100-python.tar.gz').write_bytes(archive)
    with pytest.raises(UserError, match='existing file'):
        dl.download_dataset('CIFAR100', str(raw), str(data), sources, progress=False)
    assert calls == []


def test_archive_placed_by_hand_used_offline(tmp_path):
    archive, names, _, labels = make_cifar('CIFAR100', np.random.default_rng(2))
    raw = tmp_path / 'raw'
    raw.mkdir()
    (raw / 'cifar-100-python.tar.gz').write_bytes(archive)
    sources = {'CIFAR100': [(closed_port_url('/c.tgz'), 'cifar-100-python.tar.gz', md5(archive))]}
    result = dl.download_dataset('CIFAR100', str(raw), str(tmp_path / 'data'), sources, progress=False)
    assert sum(result['train'].values()) == len(labels['train'])


def test_interrupted_split_is_redone(server, tmp_path, monkeypatch):
    archive, names, _, labels = make_cifar('CIFAR100', np.random.default_rng(3))
    sources = {'CIFAR100': serve(server, {'cifar-100-python.tar.gz': archive})}
    real_save = converters.save_image
    written = []

    def failing_save(path, image):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(path)
        real_save(path, image)

    monkeypatch.setattr(converters, 'save_image', failing_save)
    raw, data = str(tmp_path / 'raw'), str(tmp_path / 'data')
    with pytest.raises(KeyboardInterrupt):
        dl.download_dataset('CIFAR100', raw, data, sources, progress=False)
    root = tmp_path / 'data' / 'CIFAR100'
    assert (root / '.train.partial').exists() and not (root / '.train.done').exists()
    monkeypatch.setattr(converters, 'save_image', real_save)
    result = dl.download_dataset('CIFAR100', raw, data, sources, progress=False)
    assert sum(result['train'].values()) == len(labels['train'])
    assert sum(len(v) for v in count_tree(root / 'train').values()) == len(labels['train'])
    assert not (root / '.train.partial').exists() and (root / '.train.done').exists()


def test_foreign_output_folder_refused_before_download(server, tmp_path):
    archive, *_ = make_cifar('CIFAR100', np.random.default_rng(4))
    sources = {'CIFAR100': serve(server, {'cifar-100-python.tar.gz': archive})}
    (tmp_path / 'data' / 'CIFAR100' / 'train' / 'apple').mkdir(parents=True)
    with pytest.raises(UserError, match='not written by this downloader'):
        dl.download_dataset('CIFAR100', str(tmp_path / 'raw'), str(tmp_path / 'data'), sources, progress=False)
    assert server.requests == []


# ----------------------------------------------------------------------------------------------------
# MNIST (through the script) and Fashion-MNIST
# ----------------------------------------------------------------------------------------------------


def test_mnist_script_end_to_end(server, tmp_path, run_script):
    files, images, labels = make_mnist(np.random.default_rng(5))
    sources = tmp_path / 'sources.json'
    sources.write_text(
        json.dumps({'MNIST': [[[closed_port_url('/m/' + f), u], f, h] for u, f, h in serve(server, files)]})
    )
    data = tmp_path / 'data'
    res = run_script(
        SCRIPT,
        '--dataset',
        'MNIST',
        '--sources',
        sources,
        '--raw_file_path',
        tmp_path / 'raw',
        '--data_file_path',
        data,
        '--no_progress',
        check=True,
    )
    assert 'MNIST/train: 12 images in 10 classes' in res.stdout
    for split in ('train', 'val'):
        tree = count_tree(data / 'MNIST' / split)
        assert sorted(tree) == [str(d) for d in range(10)]
        assert sum(len(v) for v in tree.values()) == len(labels[split])
        for i, lab in enumerate(labels[split]):
            with Image.open(data / 'MNIST' / split / str(lab) / f'{i:05d}.png') as im:
                assert im.mode == 'L' and np.array_equal(np.asarray(im), images[split][i])
    res = run_script(
        SCRIPT,
        '--dataset',
        'MNIST',
        '--sources',
        sources,
        '--raw_file_path',
        tmp_path / 'raw',
        '--data_file_path',
        data,
        '--no_progress',
        check=True,
    )
    assert 'already' in res.stdout


def test_fashion_mnist_class_names(server, tmp_path):
    files, _, labels = make_mnist(np.random.default_rng(6), n_train=10, n_test=10)
    dl.download_dataset(
        'fashionMNIST',
        str(tmp_path / 'raw'),
        str(tmp_path / 'data'),
        {'fashionMNIST': serve(server, files)},
        progress=False,
    )
    tree = count_tree(tmp_path / 'data' / 'fashionMNIST' / 'train')
    assert sorted(tree) == [
        '0_T-shirt_top',
        '1_Trouser',
        '2_Pullover',
        '3_Dress',
        '4_Coat',
        '5_Sandal',
        '6_Shirt',
        '7_Sneaker',
        '8_Bag',
        '9_Ankle_boot',
    ]
    assert tree['9_Ankle_boot'] == ['00009.png']


def test_unreachable_url_script_fails_with_one_line(tmp_path, run_script):
    url = closed_port_url('/mnist/train-images-idx3-ubyte.gz')
    sources = tmp_path / 'sources.json'
    sources.write_text(json.dumps({'MNIST': [[url, 'train-images-idx3-ubyte.gz', md5(b'')]]}))
    res = run_script(
        SCRIPT,
        '-d',
        'MNIST',
        '--sources',
        sources,
        '--raw_file_path',
        tmp_path / 'raw',
        '-o',
        tmp_path / 'data',
        '--no_progress',
        check=False,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: cannot download') and url in lines[0]
    assert '--raw_file_path' in lines[0]


# ----------------------------------------------------------------------------------------------------
# folder datasets
# ----------------------------------------------------------------------------------------------------


def test_caltech101_nested_archive_split(server, tmp_path):
    rng = np.random.default_rng(7)
    sizes = {'accordion': 5, 'camera': 2, 'BACKGROUND_Google': 3, 'single': 1}
    originals, members = {}, [('101_ObjectCategories', None)]
    for c, n in sizes.items():
        for k in range(n):
            originals[(c, f'image_{k + 1:04d}.jpg')] = data = jpeg(rng)
            members.append((f'101_ObjectCategories/{c}/image_{k + 1:04d}.jpg', data))
    members.append(('101_ObjectCategories/accordion/Thumbs.db', b'junk'))
    inner = tar_bytes(members)
    outer = zip_bytes(
        [
            ('caltech-101/101_ObjectCategories.tar.gz', inner),
            ('caltech-101/Annotations.tar', b'not used'),
            ('__MACOSX/caltech-101/._101_ObjectCategories.tar.gz', b'mac'),
        ]
    )
    sources = {'caltech101': serve(server, {'caltech-101.zip': outer})}
    runs = []
    for out in ('data1', 'data2'):
        res = dl.download_dataset(
            'caltech101', str(tmp_path / 'raw'), str(tmp_path / out), sources, val_ratio=0.2, progress=False
        )
        runs.append({s: count_tree(tmp_path / out / 'caltech101' / s) for s in ('train', 'val')})
        assert res['train'] == {'accordion': 4, 'camera': 1} and res['val'] == {'accordion': 1, 'camera': 1}
    assert runs[0] == runs[1]  # deterministic split
    tree = runs[0]
    assert sorted(tree['train']) == sorted(tree['val']) == ['accordion', 'camera']
    for c in ('accordion', 'camera'):
        assert sorted(tree['train'][c] + tree['val'][c]) == [f'image_{k + 1:04d}.jpg' for k in range(sizes[c])]
    for s in ('train', 'val'):
        for c, names in tree[s].items():
            for f in names:
                assert (tmp_path / 'data1' / 'caltech101' / s / c / f).read_bytes() == originals[(c, f)]


def test_caltech256_tar_and_omniglot_zip(server, tmp_path):
    rng = np.random.default_rng(8)
    members = [('256_ObjectCategories/001.ak47/001_%04d.jpg' % k, jpeg(rng)) for k in range(1, 6)]
    members += [
        ('256_ObjectCategories/257.clutter/257_0001.jpg', jpeg(rng)),
        ('256_ObjectCategories/056.dog/056_0001.jpg', jpeg(rng)),
        ('256_ObjectCategories/056.dog/056_0002.jpg', jpeg(rng)),
        ('256_ObjectCategories/056.dog/greg', b'not an image'),
    ]
    sources = {'caltech256': serve(server, {'256_ObjectCategories.tar': tar_bytes(members, mode='w')})}
    res = dl.download_dataset(
        'caltech256', str(tmp_path / 'raw'), str(tmp_path / 'data'), sources, val_ratio=0.4, progress=False
    )
    assert res['train'] == {'001.ak47': 3, '056.dog': 1} and res['val'] == {'001.ak47': 2, '056.dog': 1}

    zips = {}
    for set_name, alphabet in (('images_background', 'Latin'), ('images_evaluation', 'Glagolitic')):
        zips[set_name + '.zip'] = zip_bytes(
            [
                (f'{set_name}/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png', png(rng))
                for c in (1, 2)
                for d in range(1, 11)
            ]
        )
    res = dl.download_dataset(
        'omniglot',
        str(tmp_path / 'raw_o'),
        str(tmp_path / 'data'),
        {'omniglot': serve(server, zips)},
        val_ratio=0.2,
        progress=False,
    )
    classes = ['Glagolitic_character01', 'Glagolitic_character02', 'Latin_character01', 'Latin_character02']
    assert res['train'] == dict.fromkeys(classes, 8) and res['val'] == dict.fromkeys(classes, 2)
    assert sorted(os.listdir(tmp_path / 'data' / 'omniglot' / 'val')) == classes


# ----------------------------------------------------------------------------------------------------
# MedMNIST (.npz files built here in the published layout)
# ----------------------------------------------------------------------------------------------------

MED_COUNTS = {'train': 14, 'val': 5, 'test': 6}


def make_medmnist(rng, n_classes, size=28, channels=1, counts=MED_COUNTS, multi_label=False):
    """(npz bytes, {split: images}, {split: labels}) like MedMNIST's: <split>_images (N, S, S[, 3]) uint8 and
    <split>_labels (N, 1) (N, K for a multi-label set), written with np.savez_compressed."""
    arrays, images, labels = {}, {}, {}
    for split, n in counts.items():
        shape = (n, size, size) if channels == 1 else (n, size, size, 3)
        images[split] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels[split] = np.arange(n) % n_classes
        arrays[f'{split}_images'] = images[split]
        if multi_label:
            arrays[f'{split}_labels'] = rng.integers(0, 2, (n, n_classes), dtype=np.uint8)
        else:
            arrays[f'{split}_labels'] = labels[split].reshape(-1, 1).astype(np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue(), images, labels


def test_medmnist_table_is_complete():
    from util.io.download import medmnist

    assert len(medmnist.NAMES) == 12 and 'chestmnist' in medmnist.NAMES
    for name in medmnist.NAMES:
        assert name in dl.DATASET_NAMES and set(medmnist.MEDMNIST[name].md5) == set(medmnist.SIZES)
        for size in medmnist.SIZES:
            [(url, filename, checksum)] = dl.SOURCES[medmnist.key(name, size)]
            assert dl.checksum_algorithm(checksum) == 'md5' and checksum == medmnist.MEDMNIST[name].md5[size]
            assert filename == medmnist.key(name, size) + '.npz' and url.startswith('https://zenodo.org/')
    assert dl.dataset_key('pathmnist') == 'pathmnist' and dl.dataset_key('pathmnist', 224) == 'pathmnist_224'


def test_medmnist_splits_class_names_and_pixels(server, tmp_path, monkeypatch):
    from util.io.download import medmnist

    monkeypatch.setattr(medmnist, 'BATCH', 4)  # several blocks per split: the streaming reader is exercised
    npz, images, labels = make_medmnist(np.random.default_rng(20), n_classes=11)
    sources = {'organamnist': serve(server, {'organamnist.npz': npz})}
    result = dl.download_dataset('organamnist', str(tmp_path / 'raw'), str(tmp_path / 'data'), sources, progress=False)
    root = tmp_path / 'data' / 'organamnist'
    assert result['path'] == str(root) and set(result) == {'path', 'train', 'val', 'test'}
    folders = [f'{i:02d}_{c}' for i, c in enumerate(medmnist.MEDMNIST['organamnist'].labels)]
    assert folders[0] == '00_bladder' and folders[10] == '10_spleen'
    for split, n in MED_COUNTS.items():
        tree = count_tree(root / split)
        assert sorted(tree) == sorted(folders) == folders  # alphabetical order is the label order
        assert sum(len(v) for v in tree.values()) == n == sum(result[split].values())
        for i, lab in enumerate(labels[split]):
            with Image.open(root / split / folders[lab] / f'{i:05d}.png') as im:
                assert im.mode == 'L' and np.array_equal(np.asarray(im), images[split][i])
        assert (root / f'.{split}.done').exists()


def test_medmnist_script_rgb_size_64_resume_and_rerun(server, tmp_path, run_script):
    npz, images, labels = make_medmnist(np.random.default_rng(21), n_classes=9, size=64, channels=3)
    served = serve(server, {'pathmnist_64.npz': npz})
    server.cut_once.add('/d/pathmnist_64.npz')  # the first transfer breaks half way
    sources = tmp_path / 'sources.json'
    sources.write_text(json.dumps({'pathmnist_64': [list(s) for s in served]}))
    args = [SCRIPT, '--dataset', 'pathmnist', '--size', '64', '--sources', sources, '-o', tmp_path / 'data']
    res = run_script(*args, '--raw_file_path', tmp_path / 'raw', '--no_progress', check=False)
    assert res.returncode != 0 and 'rerun to resume' in res.stderr
    assert (tmp_path / 'raw' / 'pathmnist_64.npz.part').exists()
    res = run_script(*args, '--raw_file_path', tmp_path / 'raw', '--no_progress', check=True)
    assert server.requests[-1][1] == f'bytes={len(npz) // 2}-'  # resumed where it broke
    root = tmp_path / 'data' / 'pathmnist_64'
    for split, n in MED_COUNTS.items():
        assert f'pathmnist_64/{split}: {n} images in 9 classes' in res.stdout
    assert sorted(count_tree(root / 'test'))[0] == '0_adipose'
    with Image.open(root / 'val' / '3_lymphocytes' / '00003.png') as im:
        assert im.mode == 'RGB' and np.array_equal(np.asarray(im), images['val'][3])
    res = run_script(*args, '--raw_file_path', tmp_path / 'raw', '--no_progress', check=True)
    assert 'already complete' in res.stdout


def test_medmnist_checksum_checked_before_unpacking(server, tmp_path, monkeypatch):
    from util.io.download import medmnist

    npz, _, _ = make_medmnist(np.random.default_rng(22), n_classes=2)
    opened = []
    monkeypatch.setattr(medmnist, 'convert', lambda *a, **k: opened.append('convert'))
    monkeypatch.setattr(medmnist, 'NpyImages', lambda *a, **k: opened.append('read'))
    monkeypatch.setattr(medmnist.zipfile, 'ZipFile', lambda *a, **k: opened.append('zip'))
    server.files['/d/pneumoniamnist.npz'] = npz
    sources = {'pneumoniamnist': [(server.url('/d/pneumoniamnist.npz'), 'pneumoniamnist.npz', md5(npz + b'x'))]}
    with pytest.raises(UserError, match='not the published'):
        dl.download_dataset('pneumoniamnist', str(tmp_path / 'raw'), str(tmp_path / 'data'), sources, progress=False)
    assert opened == []
    assert sorted(os.listdir(tmp_path / 'raw')) == ['pneumoniamnist.npz.bad']
    assert not (tmp_path / 'data' / 'pneumoniamnist' / 'train').exists()


def test_chestmnist_multi_label_refused_with_the_reason(server, tmp_path, run_script):
    with pytest.raises(UserError, match='chestmnist is multi-label') as err:
        dl.download_dataset('chestmnist', str(tmp_path / 'raw'), str(tmp_path / 'data'), progress=False)
    assert 'one folder per class' in str(err.value) and '\n' not in str(err.value)
    assert not (tmp_path / 'raw').exists() and not (tmp_path / 'data').exists()
    res = run_script(SCRIPT, '--dataset', 'chestmnist', '-o', tmp_path / 'data', check=False)
    assert res.returncode != 0 and res.stderr.strip().startswith('error: chestmnist is multi-label')
    with pytest.raises(UserError, match='--size is for the MedMNIST sets'):
        dl.download_dataset('MNIST', str(tmp_path / 'raw'), str(tmp_path / 'data'), progress=False, size=64)


def test_medmnist_labels_out_of_range_refused(server, tmp_path):
    npz, _, _ = make_medmnist(np.random.default_rng(23), n_classes=5)  # labels 0..4, breastmnist has 2
    sources = {'breastmnist': serve(server, {'breastmnist.npz': npz})}
    with pytest.raises(UserError, match=r'labels go from 0 to 4, expected 0..1'):
        dl.download_dataset('breastmnist', str(tmp_path / 'raw'), str(tmp_path / 'data'), sources, progress=False)


def damage_member(npz, member):
    """``npz`` (stored, not compressed) with one pixel byte of ``member`` flipped: it still opens, its CRC-32 fails."""
    blob = bytearray(npz)
    magic = blob.index(b'\x93NUMPY', blob.index(member.encode()))
    blob[magic + 10 + struct.unpack('<H', blob[magic + 8 : magic + 10])[0]] ^= 0xFF  # first byte after the header
    return bytes(blob)


@pytest.mark.parametrize('member', ['train_images.npy', 'val_images.npy', 'test_labels.npy'])
def test_medmnist_damaged_member_refused_and_nothing_partial_left(server, tmp_path, monkeypatch, member):
    """An .npz whose md5 matches the table but whose member fails its CRC: one UserError naming the file and
    what to do; the split being written is removed (no .partial marker, no class folders), finished ones stay."""
    from util.io.download import medmnist

    monkeypatch.setattr(medmnist, 'BATCH', 4)  # images of the damaged split are written before its CRC fails
    monkeypatch.setattr(np, 'savez_compressed', np.savez)  # stored members: a flipped byte is only a CRC error
    npz, _, _ = make_medmnist(np.random.default_rng(25), n_classes=2)
    npz = damage_member(npz, member)
    sources = {'pneumoniamnist': serve(server, {'pneumoniamnist.npz': npz})}
    npz_path = tmp_path / 'raw' / 'pneumoniamnist.npz'
    with pytest.raises(UserError) as err:
        dl.download_dataset('pneumoniamnist', str(tmp_path / 'raw'), str(tmp_path / 'data'), sources, progress=False)
    msg = str(err.value)
    assert msg.startswith(f'{npz_path} is damaged (Bad CRC-32') and '\n' not in msg
    assert msg.endswith('delete it and run this again to download it anew')
    root = tmp_path / 'data' / 'pneumoniamnist'
    done = {'train_images.npy': [], 'val_images.npy': ['train'], 'test_labels.npy': ['train', 'val']}[member]
    if not done:
        assert not root.exists()
    else:
        assert sorted(os.listdir(root)) == sorted(done + [f'.{s}.done' for s in done])
        assert all(sum(map(len, count_tree(root / s).values())) == MED_COUNTS[s] for s in done)
    # deleting the file and rerunning (the server now has a good copy) finishes the set
    good, _, _ = make_medmnist(np.random.default_rng(25), n_classes=2)
    npz_path.unlink()
    sources = {'pneumoniamnist': serve(server, {'pneumoniamnist.npz': good})}
    dl.download_dataset('pneumoniamnist', str(tmp_path / 'raw'), str(tmp_path / 'data'), sources, progress=False)
    assert all((root / f'.{s}.done').exists() and not (root / f'.{s}.partial').exists() for s in MED_COUNTS)


def test_transfer_bench_runs_on_a_medmnist_folder(server, tmp_path, run_script):
    """bench/transfer.py --data takes the downloader's MedMNIST output (train/ for the subsets, val/ as test)."""
    npz, _, _ = make_medmnist(np.random.default_rng(24), n_classes=2, counts={'train': 16, 'val': 8, 'test': 8})
    sources = {'pneumoniamnist': serve(server, {'pneumoniamnist.npz': npz})}
    dl.download_dataset('pneumoniamnist', str(tmp_path / 'raw'), str(tmp_path / 'data'), sources, progress=False)
    data = tmp_path / 'data' / 'pneumoniamnist'
    run_script(
        'bench/transfer.py', '--preset', 'tiny', '--data', data, '--inits', 'scratch', '--seeds', '1',
        '--labels', '3', '--work', tmp_path / 'work', '--out', tmp_path / 'out', '--name', 'med', check=True,
    )  # fmt: skip
    result = json.loads((tmp_path / 'out' / 'transfer_med.json').read_text())
    assert result['settings']['data'] == str(data)
    [one] = result['runs']
    assert one['init'] == 'scratch' and one['train_images'] == 2 * 3 and one['val_images'] == 8
    assert 0 <= one['top1'] <= 100
