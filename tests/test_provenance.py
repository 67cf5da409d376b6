"""Fingerprints of source files and the per-output source log that makes stale outputs detectable."""

import os
import subprocess
import sys

import pytest

from util.io import provenance as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)


def test_fingerprint_changes_with_content_not_with_copy_time(tmp_path):
    a = tmp_path / 'a.jpg'
    _write(str(a), b'x' * 1000)
    fp = P.fingerprint(str(a))
    assert fp['size'] == 1000
    os.utime(a, ns=(1, 1))  # a copy without -p: other time, same bytes
    assert P.same_content(fp, P.fingerprint(str(a)))
    _write(str(a), b'x' * 999 + b'y')  # same size, other bytes
    assert not P.same_content(fp, P.fingerprint(str(a)))
    assert not P.same_content(None, fp) and not P.same_content(fp, None)


def test_large_files_hash_both_ends(tmp_path):
    big = bytearray(3 * P.WHOLE_FILE_LIMIT)
    path = str(tmp_path / 'big.png')
    _write(path, bytes(big))
    fp = P.fingerprint(path)
    big[-1] = 7  # an edit at the very end
    _write(path, bytes(big))
    assert not P.same_content(fp, P.fingerprint(path))
    big[-1] = 0
    big[5] = 1  # an edit at the start
    _write(path, bytes(big))
    assert not P.same_content(fp, P.fingerprint(path))


def test_changed_sources_names_edited_swapped_and_missing(tmp_path):
    root = str(tmp_path)
    for name, data in (('a.jpg', b'aaa'), ('b.jpg', b'bbbb'), ('c/d.jpg', b'd')):
        _write(os.path.join(root, name), data)
    rels = ['a.jpg', 'b.jpg', 'c/d.jpg']
    recs = {r: P.fingerprint(os.path.join(root, r)) for r in rels}
    assert P.changed_sources(recs, root, rels) == []
    assert P.changed_sources([recs[r] for r in rels], root, rels) == []
    os.rename(os.path.join(root, 'a.jpg'), os.path.join(root, 't'))
    os.rename(os.path.join(root, 'b.jpg'), os.path.join(root, 'a.jpg'))
    os.rename(os.path.join(root, 't'), os.path.join(root, 'b.jpg'))
    os.remove(os.path.join(root, 'c', 'd.jpg'))
    assert P.changed_sources(recs, root, rels) == rels
    assert P.changed_sources({}, root, ['a.jpg']) == ['a.jpg']


def test_source_log_survives_torn_line_and_tells_sources_apart(tmp_path):
    out = str(tmp_path / 'out')
    os.makedirs(out)
    fp = {'size': 3, 'mtime_ns': 5, 'hash': 'ab'}
    with P.SourceLog(out) as log:
        log.record('x.npy', 'x.jpg', fp)
        log.record('y.npy', 'y.jpg', fp)
    with open(os.path.join(out, P.SOURCES_FILE), 'a', encoding='utf-8') as f:
        f.write('{"output": "z.npy", "sou')  # a kill in the middle of a record
    log = P.SourceLog(out)
    assert set(log.records) == {'x.npy', 'y.npy'}
    assert log.fresh('x.npy', 'x.jpg', dict(fp, mtime_ns=9))
    assert not log.fresh('x.npy', 'x.png', fp)  # same output, other source: x.png must not get x.jpg's
    assert not log.fresh('x.npy', 'x.jpg', dict(fp, hash='cd'))
    assert not log.fresh('z.npy', 'z.jpg', fp)
    assert log.source_of('x.npy') == 'x.jpg' and log.source_of('q.npy') is None
    log.record('x.npy', 'x.png', dict(fp, hash='ef'))  # appended after the torn line; a later record wins
    log.record('xhist.npy', 'x.npy', fp)  # outputs of another kind of source in the same folder
    log.close()
    log = P.SourceLog(out)
    assert log.fresh('x.npy', 'x.png', dict(fp, hash='ef')) and log.fresh('xhist.npy', 'x.npy', fp)
    assert set(log.records) == {'x.npy', 'y.npy', 'xhist.npy'}


def test_describe():
    assert P.describe(['a', 'b', 'c', 'd'], 10) == '4 of 10 (first: a, b, c, ...)'


@pytest.mark.slow
def test_import_is_light():
    code = "import sys, util.io.provenance; print('numpy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ['False', 'False']
