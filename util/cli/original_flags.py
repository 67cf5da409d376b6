"""The original scripts' flags, in one place: what each of its option strings means here.

Code, tests and docs read this module: :mod:`util.cli.strict_args` refuses the :class:`Refused` ones (one line
naming what to use), :mod:`util.cli.compat` adds the accepted ones our parsers lack as aliases of the field
named, ``tests/test_compat.py`` feeds the ``LATER_*`` lists (every flag of the original's later parsers, with
a value in the shape it took) to our parsers, ``tests/test_faults_flags.py`` checks that no option string is
read as another field, and a test checks that docs/compat.md names each of them.

A table maps an option string to the ``dest`` of our flag that takes it with the original's meaning, or to a
:class:`Refused` hint. Where the original gave one string two meanings over time, the first version's is
kept (-pc alone, -p, -n) and the other is checked separately; -lrf/-lrp, whose two versions swapped them,
are refused.
"""


class Refused(str):
    """An option string of the original that is refused here; the text says what to use instead."""


# The refusal hints (several option strings share one).
_SUFFIX = 'each run gets its own dated folder under -o; choose -o instead of a suffix'
_NO_POWER = 'persistence images are not raised to a power afterwards here; there is no equivalent'
_LRF = "it meant --lr_pre in the original's first version and --lr_fine in its later ones; give --lr_pre or --lr_fine"
_LRP = "it meant --lr_fine in the original's first version and --lr_pre in its later ones; give --lr_fine or --lr_pre"
_LR_DROP = 'the learning-rate schedule is chosen by --optimizer (e.g. sgd_cos) here'
_DIST_URL = 'launch several processes with torchrun instead (it sets the rendezvous), or use -ws N'
_ONE_IMG_SIZE = 'one --img_size serves both tasks here'
_USE_ND = 'use -nd/--ph_dims'
_USE_FILTRATION = 'use --filtration'
_NO_GREYSCALE = 'there is no greyscale option; convert the images first'
_USE_T2 = 'use -t2/--ph_train'
_USE_V2 = 'use -v2/--ph_val'
_NUM_BINS = 'the histogram bins follow -nc/--numof_classes here (PHdict.py -n sets them for -ch)'
_OWN_SIZE = "diagrams are computed at each image's own size here; resize the images first"
_USE_PLOT = 'use --plot N (plots of the first N inputs)'
_USE_LABEL_TYPE = 'use --label_type'
_NO_AFFINE = 'PHdict.py computes the PH of the images as they are; use -aff of the training scripts'
_WHOLE_IMAGES = 'PHdict.py computes the PH of whole images; PH after augmentation is -ph post of the training scripts'

# pretraining.py / finetuning.py <- the original's main.py (arguments.py mode "all") in its first and later
# versions.
TRAINING = {
    '-o': 'output',
    '-is': 'img_size',
    '-j': 'num_workers',
    '-t': 'train',
    '-val': 'val',
    '-t2': 'ph_train',
    '-v2': 'ph_val',
    '-pd': 'path2PHdir',
    '-pw': 'path2weight',
    '-c': 'cache_dir',
    '--cachedir': 'cache_dir',
    '-sf': Refused(_SUFFIX),
    '--suffix': Refused(_SUFFIX),
    '--resume': 'resume',
    '-ar': 'alpha_range',
    '-br': 'beta_range',
    '-n': 'n_samples',
    '-nv': 'n_samples_val',
    '-pb': 'prob_binary',
    '--prob_colour': 'prob_colour',
    '-ml': 'max_life',
    '-maxb': 'max_birth',
    '-minb': 'min_birth',
    '--max_birth': 'max_birth',
    '--min_birth': 'min_birth',
    '-aff': 'affine',
    '-bd': 'bandwidth',
    '--bandwidth': 'bandwidth',
    '-ps': 'sigma',
    '--persImg_sigma': 'sigma',
    '-pp': Refused(_NO_POWER),
    '--persImg_power': Refused(_NO_POWER),
    '-pn': 'power',
    '--persImg_weight': 'power',
    '--num_landscapes': 'num_landscapes',
    '-lt': 'label_type',
    '--label_type': 'label_type',
    '--label_type_pt': 'label_type',
    '-pat': 'persistence',
    '--persistence_after_transform': 'persistence',
    '-f': 'filtration',
    '--filtration': 'filtration',
    '-g': 'gradient',
    '-u': 'usenet',
    '-nd': 'ph_dims',
    '--numof_dims_pt': 'ph_dims',
    '-lrf': Refused(_LRF),
    '-lrp': Refused(_LRP),
    '-lrd': Refused(_LR_DROP),
    '--lr_drop': Refused(_LR_DROP),
    '-m': 'momentum',
    '--momentum': 'momentum',
    '-wd': 'weight_decay',
    '-op': 'optimizer',
    '-fe': 'freeze_encoder',
    '-lm': 'learning_mode',
    '--dist-url': Refused(_DIST_URL),
    '--dist-backend': 'pidf',
    '-p': 'pidf',
    '-ws': 'world_size',
    '-e': 'epochs',
    '--start_epoch': 'start_epoch',
    '--start-epoch': 'start_epoch',
    '-b': 'batch_size',
    '-is2': Refused(_ONE_IMG_SIZE),
    '--img_size_pt': Refused(_ONE_IMG_SIZE),
    '-cs': 'crop_size',
    '--crop_size': 'crop_size',
    '--img_size': 'img_size',
    '-cp': 'crop_padding',
    '-rs': 'random_scale',
    '-rr': 'random_rotation',
    '-ra': 'aug_plus',
    '--aug-plus': 'aug_plus',
    '--save_interval': 'save_interval',
    '-si': 'save_interval',
    '--save-interval': 'save_interval',
    '--log_interval': 'log_interval',
    '--log-interval': 'log_interval',
    '-s': 'seed',
    '--seed': 'seed',
    '-oti': 'output_training_images',
    '-nc': 'numof_classes',
    '-nc2': Refused(_USE_ND),
    '--numof_classes2': Refused(_USE_ND),
    '--numof_classes_pt': Refused(_USE_ND),
    '-npc': 'numof_pretrained_classes',
    '--numof_fclayer': 'numof_fclayer',
    '-pc': 'precomputed',
    '-ph': 'persistence',
    '-dt': Refused(_USE_FILTRATION),
    '--distance_transform': Refused(_USE_FILTRATION),
    '-gr': Refused(_NO_GREYSCALE),
    '--greyscale': Refused(_NO_GREYSCALE),
    '--train2': Refused(_USE_T2),
    '--val2': Refused(_USE_V2),
    '-val2': Refused(_USE_V2),
    '--train_pt': 'ph_train',
    '--val_pt': 'ph_val',
    '--num_bins': Refused(_NUM_BINS),
    '--usenet': 'usenet',
}

# PHdict.py <- the original's PHdict.py (both versions).
PHDICT = {
    '-o': 'output',
    '-it': 'imgtype',
    '-ch': 'compute_hist',
    '-cpi': 'compute_persistence_image',
    '-n': 'num_bins',
    '-nw': 'num_workers',
    '-j': 'num_workers',
    '-ml': 'max_life',
    '-mb': 'max_birth',
    '-maxb': 'max_birth',
    '-minb': 'min_birth',
    '-b': 'bandwidth',
    '-bd': 'bandwidth',
    '-s': 'sigma',
    '-ps': 'sigma',
    '--persImg_sigma': 'sigma',
    '-pp': Refused(_NO_POWER),
    '--persImg_power': Refused(_NO_POWER),
    '-pn': 'power',
    '--persImg_weight': 'power',
    '-g': 'gradient',
    '-f': 'filtration',
    '-dt': Refused(_USE_FILTRATION),
    '--distance_transform': Refused(_USE_FILTRATION),
    '-is': Refused(_OWN_SIZE),
    '--img_size': Refused(_OWN_SIZE),
    '-sf': Refused(_USE_PLOT),
    '--save_fig': Refused(_USE_PLOT),
    '-t': Refused(_USE_LABEL_TYPE),
    '--type': Refused(_USE_LABEL_TYPE),
    '-lt': 'label_type',
    '--label_type_pt': 'label_type',
    '-aff': Refused(_NO_AFFINE),
    '--affine': Refused(_NO_AFFINE),
    '-pat': Refused(_WHOLE_IMAGES),
    '--persistence_after_transform': Refused(_WHOLE_IMAGES),
}

# util/random_image.py <- random_image.py.
RANDOM_IMAGE = {
    '-o': 'output',
    '-pf': 'prefix',
    '-ar': 'alpha_range',
    '-br': 'beta_range',
    '-n': 'n_samples',
    '-nv': 'n_samples_val',
    '-pb': 'prob_binary',
    '-pc': 'prob_colour',
    '-is': 'img_size',
    '-nw': 'num_workers',
}

# util/ImageDatasetsDownloader.py <- its namesake.
DOWNLOADER = {
    '-o': 'data_file_path',
    '--data_file_path': 'data_file_path',
    '-d': 'dataset',
    '--dataset': 'dataset',
    '--raw_file_path': 'raw_file_path',
    '-r': 'validation_ratio',
    '--validation_ratio': 'validation_ratio',
}

# predict.py <- predict.py: the training flags it used (every other one is refused, see util.cli.strict_args).
PREDICT = {
    '-pw': 'path2weight',
    '-u': 'usenet',
    '-o': 'output',
    '-b': 'batch_size',
    '-is': 'img_size',
    '-cs': 'crop_size',
    '-j': 'num_workers',
    '-t': 'images',
    '-val': 'val',
    '-nc': 'numof_classes',
    '-s': 'seed',
}

# Every option of the original's later parsers, extracted from its source (`git show HEAD:arguments.py`,
# `HEAD:util/ImageDatasetsDownloader.py` of shizuo-kaji/PretrainCNNwithNoData): (option strings, a value in
# the shape the original took).  arguments.py's mode "all" (main.py, and also predict.py and visMap.py,
# which parsed the same flags): 57 flags.
LATER_TRAINING = [
    (('--output', '-o'), ['X']),
    (('--img_size', '-is'), ['64']),
    (('--num_workers', '-j'), ['3']),
    (('--train', '-t'), ['X']),
    (('--val', '-val'), ['X']),
    (('--train_pt', '-t2'), ['X']),
    (('--val_pt', '-v2'), ['X']),
    (('--path2PHdir', '-pd'), ['X']),
    (('--path2weight', '-pw'), ['X']),
    (('--cachedir', '-c'), ['X']),
    (('--suffix', '-sf'), ['X']),
    (('--resume',), ['X']),
    (('--alpha_range', '-ar'), ['0.5', '1']),
    (('--beta_range', '-br'), ['1', '2']),
    (('--n_samples', '-n'), ['1000']),
    (('--n_samples_val', '-nv'), ['10']),
    (('--prob_binary', '-pb'), ['0.3']),
    (('--prob_colour', '-pc'), ['0.3']),
    (('--max_life', '-ml'), ['40', '40']),
    (('--max_birth', '-maxb'), ['30', '30']),
    (('--min_birth', '-minb'), ['-30', '-30']),
    (('--affine', '-aff'), []),
    (('--bandwidth', '-bd'), ['3']),
    (('--persImg_sigma', '-ps'), ['2']),
    (('--persImg_power', '-pp'), ['0.5']),
    (('--persImg_weight', '-pn'), ['1.5']),
    (('--num_landscapes',), ['3']),
    (('--label_type_pt', '-lt'), ['persistence_betticurve']),
    (('--persistence_after_transform', '-pat'), []),
    (('--filtration', '-f'), ['radial']),
    (('--gradient', '-g'), []),
    (('--usenet', '-u'), ['resnet18']),
    (('--numof_dims_pt', '-nd'), ['120']),
    (('--lr_fine', '-lrf'), ['0.02']),
    (('--lr_pre', '-lrp'), ['0.2']),
    (('--lr_drop', '-lrd'), ['3']),
    (('--momentum', '-m'), ['0.8']),
    (('--weight_decay', '-wd'), ['0.001']),
    (('--optimizer', '-op'), ['adam']),
    (('--freeze_encoder', '-fe'), []),
    (('--learning_mode', '-lm'), ['finetuning']),
    (('--dist-url',), ['tcp://h:1']),
    (('--dist-backend', '-p'), ['gloo']),
    (('--world_size', '-ws'), ['2']),
    (('--epochs', '-e'), ['7']),
    (('--start_epoch',), ['2']),
    (('--batch_size', '-b'), ['16']),
    (('--img_size_pt', '-is2'), ['100']),
    (('--crop_size', '-cs'), ['32']),
    (('--crop_padding', '-cp'), ['2']),
    (('--random_scale', '-rs'), ['0.2']),
    (('--random_rotation', '-rr'), ['10']),
    (('--aug-plus', '-ra'), []),
    (('--save_interval',), ['5']),
    (('--log_interval',), ['50']),
    (('--seed', '-s'), ['3']),
    (('--output_training_images', '-oti'), ['4']),
]
# random_image.py: arguments.py's mode "random_image" (9 flags).
LATER_RANDOM_IMAGE = [
    (('--output', '-o'), ['X']),
    (('--img_size', '-is'), ['64']),
    (('--num_workers', '-j'), ['3']),
    (('--alpha_range', '-ar'), ['0.5', '1']),
    (('--beta_range', '-br'), ['1', '2']),
    (('--n_samples', '-n'), ['100']),
    (('--n_samples_val', '-nv'), ['10']),
    (('--prob_binary', '-pb'), ['0.3']),
    (('--prob_colour', '-pc'), ['0.3']),
]
# PHdict.py: arguments.py's mode "PHdict" (19, with the positional target_dir).
LATER_PHDICT = [
    (('--output', '-o'), ['X']),
    (('--img_size', '-is'), ['64']),
    (('--num_workers', '-j'), ['3']),
    (('--max_life', '-ml'), ['40', '40']),
    (('--max_birth', '-maxb'), ['30', '30']),
    (('--min_birth', '-minb'), ['-30', '-30']),
    (('--affine', '-aff'), []),
    (('--bandwidth', '-bd'), ['3']),
    (('--persImg_sigma', '-ps'), ['2']),
    (('--persImg_power', '-pp'), ['0.5']),
    (('--persImg_weight', '-pn'), ['1.5']),
    (('--num_landscapes',), ['3']),
    (('--label_type_pt', '-lt'), ['persistence_betticurve']),
    (('--persistence_after_transform', '-pat'), []),
    (('--filtration', '-f'), ['radial']),
    (('--gradient', '-g'), []),
    (('--num_bins', '-n'), ['30', '30', '20', '20']),
    (('--save_fig', '-sf'), []),
]
PHDICT_POSITIONAL = 'target_dir'
# util/ImageDatasetsDownloader.py (4 flags).
LATER_DOWNLOADER = [
    (('--dataset', '-d'), ['CIFAR10']),
    (('--raw_file_path',), ['X']),
    (('--data_file_path', '-o'), ['X']),
    (('--validation_ratio', '-r'), ['0.3']),
]


def refused(table):
    """{option string: hint} of the refused entries of ``table``."""
    return {flag: str(meaning) for flag, meaning in table.items() if isinstance(meaning, Refused)}


def accepted(table):
    """{option string: dest} of the entries of ``table`` taken with the original's meaning."""
    return {flag: meaning for flag, meaning in table.items() if not isinstance(meaning, Refused)}


def option_strings(later):
    """Every option string of one of the ``LATER_*`` lists."""
    return tuple(s for strings, _ in later for s in strings)
