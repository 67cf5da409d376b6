"""The fault matrix of the whole repository (source checks).

Its own rows are here; rows run on several scripts are in tests/faultrows.py, the machinery
in tests/faultlib.py.
"""

import ast

from tests import faultlib, faultrows  # noqa: F401 (faultrows registers the rows run on several scripts)
from tests.faultlib import _calls, _kw, _python_files, case


@case(
    'repo',
    'torch.load without weights_only=True',
    'none: every torch.load / torch.hub.load_state_dict_from_url call passes weights_only=True (tests may pass '
    'an explicit weights_only=False only to prove that a payload file is live)',
)
def _grep_torch_load(ctx, script):
    found, bad = 0, []
    for rel, tree in _python_files(include_tests=True):
        for name, call, func in _calls(tree):
            if name == 'torch.load' or name.endswith('load_state_dict_from_url'):
                found += 1
                v = _kw(call, 'weights_only')
                ok = isinstance(v, ast.Constant) and (
                    v.value is True or (v.value is False and rel.startswith('tests/'))
                )  # a test proving a payload is live
                if not ok:
                    bad.append(f'{rel}:{call.lineno} {name}')
    assert found >= 3, found
    assert not bad, bad


ALLOWED_UNPICKLERS = {('util/io/download/archives.py', 'restricted_loads', 'RestrictedUnpickler')}
# (file, function, call): pickle use on the program's own in-memory objects, never on a file
ALLOWED_PICKLE = {
    (
        'bench/ph_bench.py',
        'profile_stages',
        'pickle.loads',
    ): 'times pickle.loads(pickle.dumps(diagram)) of its own array (the cost of a pool transfer)'
}


@case(
    'repo',
    'unpickling of unverified downloads',
    'none: no pickle.load(s)/Unpickler, np.load(allow_pickle=True), torch.load(weights_only=False) outside '
    'the restricted CIFAR unpickler (util/io/download/archives.py)',
)
def _grep_pickle(ctx, script):
    bad = []
    for rel, tree in _python_files(include_tests=False):
        for name, call, func in _calls(tree):
            short = name.split('.')[-1]
            if name in (
                'pickle.load',
                'pickle.loads',
                'pickle.Unpickler',
                'cPickle.load',
                'dill.load',
                'joblib.load',
                'marshal.load',
                'marshal.loads',
                'shelve.open',
                'yaml.load',
            ):
                if (rel, func, name) not in ALLOWED_PICKLE:
                    bad.append(f'{rel}:{call.lineno} {name}')
            elif short == 'RestrictedUnpickler' and (rel, func, short) not in ALLOWED_UNPICKLERS:
                bad.append(f'{rel}:{call.lineno} {name}')
            elif short == 'load' and name.startswith(('np.', 'numpy.')):
                v = _kw(call, 'allow_pickle')
                if v is not None and not (isinstance(v, ast.Constant) and v.value is False):
                    bad.append(f'{rel}:{call.lineno} {name}(allow_pickle=...)')
            elif name == 'torch.load' and not (
                isinstance(_kw(call, 'weights_only'), ast.Constant) and _kw(call, 'weights_only').value is True
            ):
                bad.append(f'{rel}:{call.lineno} {name}')
        for node in ast.walk(tree):  # a class deriving from pickle.Unpickler must be the restricted one
            if isinstance(node, ast.ClassDef) and any('Unpickler' in ast.unparse(b) for b in node.bases):
                if (rel, node.name) != ('util/io/download/archives.py', 'RestrictedUnpickler'):
                    bad.append(f'{rel}:{node.lineno} class {node.name}')
    assert not bad, bad


@case(
    'repo',
    'eval/exec of user input',
    'none: no eval, exec, compile, __import__, os.system/popen or shell=True in non-test code',
)
def _grep_eval(ctx, script):
    bad = []
    for rel, tree in _python_files(include_tests=False):
        for name, call, func in _calls(tree):
            if name in (
                'eval',
                'exec',
                'compile',
                '__import__',
                'os.system',
                'os.popen',
                'builtins.eval',
                'builtins.exec',
            ):
                bad.append(f'{rel}:{call.lineno} {name}')
            shell = _kw(call, 'shell')
            if (
                name.startswith('subprocess.')
                and shell is not None
                and not (isinstance(shell, ast.Constant) and shell.value is False)
            ):
                bad.append(f'{rel}:{call.lineno} {name}(shell=...)')
    assert not bad, bad


# Every deletion in non-test code, with why it only removes what the program itself created.
ALLOWED_DELETIONS = {
    ('util/io/fileio.py', 'atomic_open', 'os.unlink'): 'its own temporary file, when the write failed',
    ('util/io/fileio.py', 'ensure_dir', 'os.unlink'): 'the probe file it has just created to test writability',
    (
        'util/ph/generator.py',
        'remove_stale_temps',
        'os.unlink',
    ): 'temp files <prefix>NNNNNNNN.<fmt>.tmp-* that a killed run of this script left',
    (
        'util/io/download/archives.py',
        'safe_extract',
        'shutil.rmtree',
    ): 'its own temporary unpacking folder <dest>.tmp-<pid>-<id> (also one left by an interrupted unpack)',
    (
        'util/io/download/converters.py',
        '_begin_split',
        'shutil.rmtree',
    ): 'a split folder of an interrupted run of its own (only with its .<split>.partial marker; a folder '
    'without markers is refused)',
    ('util/io/download/converters.py', '_finish_split', 'os.unlink'): 'its own .<split>.partial marker',
    (
        'util/io/download/medmnist.py',
        '_drop_unfinished',
        'shutil.rmtree',
    ): 'a split folder of its own that it could not finish (only with its .<split>.partial marker)',
    ('util/io/download/medmnist.py', '_drop_unfinished', 'os.unlink'): "that split's own .<split>.partial marker",
    ('util/io/download/medmnist.py', 'convert', 'os.rmdir'): 'the dataset folder, only when a failed run left it empty',
    ('bench/generator_bench.py', 'run', 'shutil.rmtree'): 'folders it made in its own temporary folder',
    ('bench/ph_bench.py', 'run', 'shutil.rmtree'): 'folders it made in its own temporary folder',
    (
        'bench/ph_engine_bench.py',
        'bench_phdict',
        'shutil.rmtree',
    ): 'its own tempfile.mkdtemp folder and the output folders PHdict wrote in it',
    ('bench/gpu_bench.py', 'main', 'shutil.rmtree'): 'its own tempfile.mkdtemp folder',
    (
        'bench/transfer_runner.py',
        'training_run',
        'shutil.rmtree',
    ): 'an unfinished run folder of its own work folder (no done file: left by a killed earlier call)',
    (
        'bench/transfer_data.py',
        '_make_split',
        'shutil.rmtree',
    ): 'an unfinished split folder of its own work folder (no export.json/split.json: a killed earlier call)',
    (
        'bench/transfer_data.py',
        '_cap_test',
        'os.remove',
    ): 'test images beyond the cap in the split folder it has just exported into its own work folder',
}
DELETERS = ('shutil.rmtree', 'os.rmdir', 'os.removedirs', 'os.remove', 'os.unlink')


@case(
    'repo',
    'deletes what it did not create',
    'none: every rmtree/rmdir/remove/unlink in non-test code is in ALLOWED_DELETIONS with its justification',
)
def _grep_deletions(ctx, script):
    found, bad = set(), []
    for rel, tree in _python_files(include_tests=False):
        for name, call, func in _calls(tree):
            if name in DELETERS or name.endswith(('.unlink', '.rmdir')) and not name.startswith('os.'):
                key = (rel, func, name)
                found.add(key)
                if key not in ALLOWED_DELETIONS:
                    bad.append(f'{rel}:{call.lineno} {name} in {func}()')
    assert not bad, f"deletions without a justification in ALLOWED_DELETIONS: {bad}"
    assert found, 'the scan found no deletion at all (broken scan?)'


data, test_fault = faultlib.data, faultlib.test_fault  # the matrix's fixture and test
pytest_generate_tests, ledger = faultlib.matrix('repo')
