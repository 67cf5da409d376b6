"""``--dataset omniglot_small``: Omniglot's two small background sets as class folders split by drawer.

The archives are slices of the real ones (a few characters, every drawer, member names and bytes as published),
built in tmp_path from the copies in ``shared/data/omniglot-small/`` and served over loopback HTTP to the real
download code; one test converts the real archives whole from ``--raw_file_path`` with the built-in table.
"""

import hashlib
import json
import os
import zipfile

import pytest

from tests.conftest import ROOT
from tests.test_downloader import closed_port_url, server  # noqa: F401 (the loopback server fixture)
from util.errors import UserError
from util.io import download as dl
from util.io.download import omniglot

SCRIPT = 'util/ImageDatasetsDownloader.py'
ARCHIVES = omniglot.ARCHIVES
PUBLISHED_MD5 = ('e704a628b5459e08445c13499850abc4', 'b75a71a51d3b13f821f212756fe481fd')


def _shared_dir():
    """shared/data/omniglot-small in the checkout or a folder above it (a worktree's checkout sits deeper)."""
    here = ROOT
    for _ in range(4):
        cand = os.path.join(here, 'shared', 'data', 'omniglot-small')
        if all(os.path.isfile(os.path.join(cand, a)) for a in ARCHIVES):
            return cand
        here = os.path.dirname(here)
    return None


SHARED = _shared_dir()
pytestmark = pytest.mark.skipif(SHARED is None, reason='shared/data/omniglot-small/ (the real archives) not found')

#: the characters of the slice: Greek and Latin ones are in both archives (as in the real ones)
SLICE = {
    ARCHIVES[0]: ('Greek/character01', 'Greek/character02', 'Latin/character01', 'Balinese/character01'),
    ARCHIVES[1]: ('Greek/character01', 'Greek/character02', 'Latin/character01', 'Tagalog/character01'),
}
SLICE_CLASSES = [
    'Balinese_character01',
    'Greek_character01',
    'Greek_character02',
    'Latin_character01',
    'Tagalog_character01',
]


def md5(data):
    return hashlib.md5(data).hexdigest()


def real_members(archive, characters):
    """[(member name, bytes)] of the real archive's PNGs of ``characters`` ('Alphabet/characterNN')."""
    top = archive[: -len('.zip')]
    with zipfile.ZipFile(os.path.join(SHARED, archive)) as zf:
        out = [
            (i.filename, zf.read(i))
            for i in zf.infolist()
            if not i.is_dir() and '/'.join(i.filename.split('/')[1:3]) in characters
        ]
    assert out and all(n.startswith(top + '/') for n, _ in out)
    return out


def zip_of(members):
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def slice_archives(edit=None):
    """{archive name: bytes} of the slice; ``edit(archive, members) -> members`` alters one's members."""
    out = {}
    for archive, chars in SLICE.items():
        members = real_members(archive, chars)
        out[archive] = zip_of(edit(archive, members) if edit else members)
    return out


def serve(srv, files):
    out = []
    for name, data in files.items():
        srv.files['/o/' + name] = data
        out.append((srv.url('/o/' + name), name, md5(data)))
    return {'omniglot_small': out}


def tree(split_dir):
    """{class: sorted file names} of one split folder."""
    return {c: sorted(os.listdir(os.path.join(split_dir, c))) for c in sorted(os.listdir(split_dir))}


def drawers(files):
    return {int(f[: -len('.png')].split('_')[1]) for f in files}


def test_catalog_entry_is_the_repository_raw_files_with_their_md5():
    entries = dl.normalize_sources(dl.SOURCES['omniglot_small'], 'omniglot_small')
    base = 'https://raw.githubusercontent.com/brendenlake/omniglot/master/python/'
    assert [(s.urls, s.filename, s.checksum) for s in entries] == [
        ((base + a,), a, h) for a, h in zip(ARCHIVES, PUBLISHED_MD5)
    ]
    full = dl.normalize_sources(dl.SOURCES['omniglot'], 'omniglot')[0].urls[0]
    assert full == base + 'images_background.zip'  # beside the full set's
    for a, h in zip(ARCHIVES, PUBLISHED_MD5):  # the copies the slices are cut from are the published files
        assert dl.file_digest(os.path.join(SHARED, a)) == h
    assert 'omniglot_small' in dl.DATASET_NAMES


def test_val_drawers():
    assert omniglot.val_drawers(0.2) == (17, 18, 19, 20)
    assert omniglot.val_drawers(0.5) == tuple(range(11, 21))
    assert omniglot.val_drawers(0.01) == (20,) and omniglot.val_drawers(0.99) == tuple(range(2, 21))
    assert omniglot.val_drawers(0) == ()


def test_slice_over_http_split_by_drawer_merged_and_rerun(server, tmp_path):  # noqa: F811
    sources = serve(server, slice_archives())
    raw, data = str(tmp_path / 'raw'), str(tmp_path / 'data')
    res = dl.download_dataset('omniglot_small', raw, data, sources, progress=False)
    assert [p for p, _ in server.requests] == ['/o/' + a for a in ARCHIVES]
    root = tmp_path / 'data' / 'omniglot_small'
    assert res['path'] == str(root)
    train, val = tree(root / 'train'), tree(root / 'val')
    # classes are characters; Greek and Latin (in both archives) are written once, not twice
    assert sorted(train) == sorted(val) == SLICE_CLASSES
    assert res['train'] == dict.fromkeys(SLICE_CLASSES, 16) and res['val'] == dict.fromkeys(SLICE_CLASSES, 4)
    for c in SLICE_CLASSES:
        # the split is by drawer: no drawer on both sides, drawers 17-20 in val/, the rest in train/
        assert drawers(train[c]) == set(range(1, 17)) and drawers(val[c]) == {17, 18, 19, 20}
        assert len({f.split('_')[0] for f in train[c] + val[c]}) == 1  # one character id per class
    # the bytes are those published (the Greek of archive 2 is the Greek of archive 1)
    published = dict(real_members(ARCHIVES[1], SLICE[ARCHIVES[1]]))
    for split, t in (('train', train), ('val', val)):
        for f in t['Greek_character02']:
            got = (root / split / 'Greek_character02' / f).read_bytes()
            assert got == published[f'images_background_small2/Greek/character02/{f}']
    assert json.loads((root / '.val.done').read_text())['images'] == 20
    # a rerun downloads nothing and writes nothing
    n = len(server.requests)
    again = dl.download_dataset('omniglot_small', raw, data, sources, progress=False)
    assert again == {'path': str(root), 'train': None, 'val': None} and len(server.requests) == n


def test_validation_ratio_moves_drawers(server, tmp_path):  # noqa: F811
    sources = serve(server, slice_archives())
    res = dl.download_dataset(
        'omniglot_small', str(tmp_path / 'raw'), str(tmp_path / 'data'), sources, val_ratio=0.5, progress=False
    )
    assert res['val'] == dict.fromkeys(SLICE_CLASSES, 10)
    val = tree(tmp_path / 'data' / 'omniglot_small' / 'val')
    assert all(drawers(v) == set(range(11, 21)) for v in val.values())


def test_wrong_checksum_refused_before_unpacking(server, tmp_path):  # noqa: F811
    files = slice_archives()
    sources = serve(server, files)
    url, name, _ = sources['omniglot_small'][1]
    sources['omniglot_small'][1] = (url, name, md5(files[name] + b'x'))
    raw = tmp_path / 'raw'
    with pytest.raises(UserError, match='not the published') as err:
        dl.download_dataset('omniglot_small', str(raw), str(tmp_path / 'data'), sources, progress=False)
    assert '\n' not in str(err.value) and str(raw / (name + '.bad')) in str(err.value)
    assert sorted(os.listdir(raw)) == [ARCHIVES[0], name + '.bad']  # nothing unpacked
    assert not (tmp_path / 'data' / 'omniglot_small' / 'train').exists()


def test_cut_transfer_resumes(server, tmp_path):  # noqa: F811
    files = slice_archives()
    sources = serve(server, files)
    server.cut_once.add('/o/' + ARCHIVES[0])
    raw, data = str(tmp_path / 'raw'), str(tmp_path / 'data')
    with pytest.raises(UserError, match='rerun to resume'):
        dl.download_dataset('omniglot_small', raw, data, sources, progress=False)
    assert os.listdir(raw) == [ARCHIVES[0] + '.part']
    res = dl.download_dataset('omniglot_small', raw, data, sources, progress=False)
    assert server.requests[-2] == ('/o/' + ARCHIVES[0], f'bytes={len(files[ARCHIVES[0]]) // 2}-')
    assert sum(res['train'].values()) == 16 * len(SLICE_CLASSES)


def test_truncated_zip_with_its_own_checksum_refused_in_one_line(tmp_path, run_script):
    """A cut archive whose checksum was taken of the cut bytes (a --sources table made from a broken copy)
    passes verification but is refused before unpacking, in one line, with nothing written."""
    files = slice_archives()
    cut = files[ARCHIVES[0]][: len(files[ARCHIVES[0]]) * 2 // 3]
    raw = tmp_path / 'raw'
    raw.mkdir()
    (raw / ARCHIVES[0]).write_bytes(cut)
    (raw / ARCHIVES[1]).write_bytes(files[ARCHIVES[1]])
    table = {'omniglot_small': [[closed_port_url('/' + a), a, md5((raw / a).read_bytes())] for a in ARCHIVES]}
    (tmp_path / 'sources.json').write_text(json.dumps(table))
    res = run_script(
        SCRIPT, '-d', 'omniglot_small', '--sources', tmp_path / 'sources.json', '--raw_file_path', raw,
        '-o', tmp_path / 'data', '--no_progress', check=False,
    )  # fmt: skip
    assert res.returncode == 2
    [line] = res.stderr.strip().splitlines()
    assert line.startswith(f'error: {raw / ARCHIVES[0]} is not a whole zip archive') and 'rerun' in line
    assert sorted(os.listdir(raw)) == sorted(ARCHIVES)  # not unpacked, not even a temporary folder
    assert not (tmp_path / 'data' / 'omniglot_small' / 'train').exists()


def test_truncated_copy_in_raw_file_path_refused_by_checksum(tmp_path, run_script):
    """The built-in table: a cut copy placed in --raw_file_path fails its published md5 and is never opened."""
    raw = tmp_path / 'raw'
    raw.mkdir()
    whole = open(os.path.join(SHARED, ARCHIVES[0]), 'rb').read()
    (raw / ARCHIVES[0]).write_bytes(whole[:100_000])
    res = run_script(
        SCRIPT, '-d', 'omniglot_small', '--raw_file_path', raw, '-o', tmp_path / 'data', '--no_progress', check=False
    )
    assert res.returncode == 2
    [line] = res.stderr.strip().splitlines()
    assert line.startswith(f'error: existing file {raw / ARCHIVES[0]} has md5 ') and PUBLISHED_MD5[0] in line
    assert os.listdir(raw) == [ARCHIVES[0] + '.bad']
    assert not (tmp_path / 'data' / 'omniglot_small' / 'train').exists()


def test_one_image_with_different_bytes_in_the_two_archives_refused(server, tmp_path):  # noqa: F811
    def edit(archive, members):
        if archive != ARCHIVES[1]:
            return members
        return [(n, d + b'\0' if n.endswith('Greek/character01/0394_05.png') else d) for n, d in members]

    sources = serve(server, slice_archives(edit))
    with pytest.raises(UserError, match=r"0394_05.png are one image of class 'Greek_character01' with different"):
        dl.download_dataset('omniglot_small', str(tmp_path / 'raw'), str(tmp_path / 'data'), sources, progress=False)
    assert not (tmp_path / 'data' / 'omniglot_small' / 'train').exists()


def test_png_without_a_drawer_number_refused(server, tmp_path):  # noqa: F811
    def edit(archive, members):
        return members + [(f'{archive[:-4]}/Greek/character01/extra.png', members[0][1])]

    sources = serve(server, slice_archives(edit))
    with pytest.raises(UserError, match='cannot split by drawer'):
        dl.download_dataset('omniglot_small', str(tmp_path / 'raw'), str(tmp_path / 'data'), sources, progress=False)


def test_real_archives_from_raw_file_path(tmp_path, run_script):
    """The whole real archives, placed in --raw_file_path, with the built-in table (nothing downloaded)."""
    raw = tmp_path / 'raw'
    raw.mkdir()
    for a in ARCHIVES:
        os.symlink(os.path.join(SHARED, a), raw / a)
    data = tmp_path / 'data'
    res = run_script(SCRIPT, '-d', 'omniglot_small', '--raw_file_path', raw, '-o', data, '--no_progress', check=True)
    assert 'omniglot_small/train: 3872 images in 242 classes' in res.stdout
    assert 'omniglot_small/val: 968 images in 242 classes' in res.stdout
    train, val = tree(data / 'omniglot_small' / 'train'), tree(data / 'omniglot_small' / 'val')
    assert list(train) == list(val) and len({c.split('_character')[0] for c in train}) == 8
    assert all(drawers(train[c]).isdisjoint(drawers(val[c])) for c in train)
    assert set().union(*(drawers(v) for v in val.values())) == {17, 18, 19, 20}


def test_transfer_bench_loads_the_result(server, tmp_path, run_script):  # noqa: F811
    """bench/transfer.py --data takes the output (subsets from train/, val/ as the test set), at 5 labels/class."""
    sources = serve(server, slice_archives())
    dl.download_dataset('omniglot_small', str(tmp_path / 'raw'), str(tmp_path / 'data'), sources, progress=False)
    data = tmp_path / 'data' / 'omniglot_small'
    run_script(
        'bench/transfer.py', '--preset', 'tiny', '--data', data, '--inits', 'scratch', '--seeds', '1',
        '--labels', '5', '--work', tmp_path / 'work', '--out', tmp_path / 'out', '--name', 'omni', check=True,
    )  # fmt: skip
    result = json.loads((tmp_path / 'out' / 'transfer_omni.json').read_text())
    [one] = result['runs']
    assert one['train_images'] == 5 * len(SLICE_CLASSES) and 0 <= one['top1'] <= 100
