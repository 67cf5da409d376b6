"""The datasets each learning mode trains and validates on, assembled from the data flags."""
import os

from util import distributed, fileio
from util.errors import UserError

DEFAULT_NUM_CLASSES = 100   # -nc's default: when left there, the class count is read


def build_pretraining_sets(args):
    """(train dataset, val dataset or None) of PH labels for the data mode the flags select (see
    pretraining.py): -t with -pd (diagrams) / -pd -pc (label matrix) / nothing (computed), or generated."""
    from util.datasets import ComputedLabels, GeneratedPH, pretrain_transforms, pretrain_val_transforms
    from util.vectorise import vectoriser_from_args
    vectoriser = vectoriser_from_args(args, args.numof_classes, None if args.precomputed else '-nc')
    computed = ComputedLabels(vectoriser, args.filtration, args.gradient, args.ph_engine)
    spatial, to_tensor = pretrain_transforms(args)
    val_spatial, val_to_tensor = pretrain_val_transforms(args)

    if args.train is None:
        from util.random_image import GeneratorConfig
        cfg = GeneratorConfig(img_size=args.img_size, alpha_range=tuple(args.alpha_range),
                              beta_range=tuple(args.beta_range), prob_binary=args.prob_binary,
                              prob_colour=args.prob_colour)
        cfg.validate()
        if args.n_samples < 1:
            raise UserError("--n_samples must be at least 1")
        train = GeneratedPH(cfg, args.seed, args.n_samples, computed, spatial, to_tensor, args.persistence,
                            stream=0, cache_dir=args.cache_dir)
        n_val = min(1000, max(1, args.n_samples // 10)) if args.n_samples_val < 0 else args.n_samples_val
        val = None
        if n_val > 0 and args.val is None:
            val_cache = os.path.join(args.cache_dir, 'val') if args.cache_dir else None
            val = GeneratedPH(cfg, args.seed, n_val, computed, val_spatial, val_to_tensor, 'pre', stream=1,
                              cache_dir=val_cache, fresh_each_epoch=False)
        elif args.val is not None:
            val = _folder_set(args.val, '-val', computed, val_spatial, val_to_tensor, 'pre', args, vectoriser)
        return train, val

    if args.precomputed and not args.path2PHdir:
        raise UserError("-pc reads precomputed labels from -pd; give -pd PHDIR")
    if args.path2PHdir and args.persistence == 'post':
        raise UserError("-pd holds PH of whole images, which cannot describe augmented crops: use -ph pre, or "
                        "drop -pd to compute PH of each crop")
    train = _folder_set(args.train, '-t', computed, spatial, to_tensor, args.persistence, args, vectoriser)
    val = None
    if args.val is not None:
        val = _folder_set(args.val, '-val', computed, val_spatial, val_to_tensor, 'pre', args, vectoriser,
                          fallback_to_computed=True)
    return train, val


def _folder_set(root, flag, computed, spatial, to_tensor, persistence, args, vectoriser, fallback_to_computed=False):
    from util.datasets import DiagramDirLabels, FolderPH, MatrixLabels
    from util.labels import find_label_matrix, load_label_matrix
    fileio.require_dir(root, 'image folder', flag)
    rel = fileio.list_images(root)
    if not rel:
        raise UserError(f"no images (png, jpg, ...) found under {root!r} (given by {flag})")
    labels = computed
    try:
        if args.path2PHdir:
            fileio.require_dir(args.path2PHdir, 'PH folder', '-pd')
            if args.precomputed:
                found = find_label_matrix(args.path2PHdir, args.label_type)
                if found is None:
                    raise UserError(f"no labels_{args.label_type}.npy/.txt in {args.path2PHdir!r}; run PHdict.py "
                                    f"{root} -o {args.path2PHdir} --label_type {args.label_type} "
                                    f"--numof_dims {args.numof_classes}")
                matrix, names = load_label_matrix(*found, expected_dim=args.numof_classes)
                labels = MatrixLabels(matrix, names, rel, found[0])
            else:
                labels = DiagramDirLabels(args.path2PHdir, rel, vectoriser)
    except UserError:
        if not fallback_to_computed:
            raise
        labels = computed
    return FolderPH(root, rel, labels, spatial, to_tensor, persistence, computed=computed,
                    bad_images=args.bad_images)


def resolve_val(args, required=True):
    """The validation folder: -val, else the -t path with 'train' replaced by 'val' (else 'test')."""
    if args.val:
        return args.val
    if args.train:
        head, tail = os.path.split(os.path.normpath(args.train))
        if 'train' in tail:
            for name in ('val', 'test'):
                candidate = os.path.join(head, tail.replace('train', name))
                if os.path.isdir(candidate):
                    return candidate
    if not required:
        return None
    raise UserError("no validation folder: give -val DIR (looked for the -t path with 'train' replaced by "
                    "'val' or 'test')")


def check_class_layout(root, flag):
    """Raise :class:`UserError` unless ``root`` is a folder with class sub-folders."""
    fileio.require_dir(root, 'image folder', flag)
    if not any(entry.is_dir() for entry in os.scandir(root)):
        raise UserError(f"{root!r} (given by {flag}) has no class sub-folders; -lm finetuning, combined, "
                        f"simultaneous and alternating and --label_type class need -t/-val in the layout "
                        f"<folder>/<class>/<image> (PH-only images go to -t2 in combined/alternating)")


def class_folder(root, transform, bad_images, flag):
    from util.datasets import SafeImageFolder
    check_class_layout(root, flag)
    return SafeImageFolder(root, transform, bad_images)


def match_classes(args, train_set, val_set, val_root, strict=False):
    """Check that train and val have the same classes and that -nc fits (left at its default, it is set to the
    number of classes found); returns the class names."""
    if train_set is not None and val_set is not None and val_set.classes != train_set.classes:
        extra = sorted(set(val_set.classes) - set(train_set.classes))
        missing = sorted(set(train_set.classes) - set(val_set.classes))
        raise UserError(f"the classes of {val_root!r} differ from those of {args.train!r}: "
                        f"only in val: {extra[:5]}, only in train: {missing[:5]}")
    classes = (val_set if val_set is not None else train_set).classes
    if args.numof_classes != len(classes):
        if args.numof_classes != DEFAULT_NUM_CLASSES or strict:
            raise UserError(f"-nc {args.numof_classes} but {val_root or args.train!r} has {len(classes)} classes")
        if distributed.is_main_process():
            print(f"note: {len(classes)} classes found; using -nc {len(classes)}", flush=True)
        args.numof_classes = len(classes)
    return classes


def build_sets(args, need_train):
    """(train ImageFolder or None, val ImageFolder, class names) for fine-tuning / evaluation."""
    from util.datasets import finetune_transforms
    train_set = None
    if need_train:
        if not args.train:
            raise UserError("give the training folder with -t DIR (class sub-folders of images)")
        train_set = class_folder(args.train, finetune_transforms(args, True), args.bad_images, '-t')
    val_root = resolve_val(args)
    val_set = class_folder(val_root, finetune_transforms(args, False), 'skip', '-val')
    classes = match_classes(args, train_set, val_set, val_root, strict=args.learning_mode == 'evaluation')
    return train_set, val_set, classes


def build_class_pretraining_sets(args):
    """``--label_type class``: (train, val or None, classes) from the class folders of -t / -val, with the
    pretraining augmentation."""
    from torchvision import transforms
    from util.datasets import pretrain_transforms, pretrain_val_transforms
    if not args.train:
        raise UserError("--label_type class pretrains on labelled images: give their class folders with -t DIR")
    if args.path2PHdir or args.precomputed:
        raise UserError("-pd/-pc hold PH labels; --label_type class uses the class folders of -t instead")
    spatial, to_tensor = pretrain_transforms(args)
    val_spatial, val_to_tensor = pretrain_val_transforms(args)
    train = class_folder(args.train, transforms.Compose([spatial, to_tensor]), args.bad_images, '-t')
    val_root = resolve_val(args, required=False)
    val = None
    if val_root is not None:
        val = class_folder(val_root, transforms.Compose([val_spatial, val_to_tensor]), 'skip', '-val')
    return train, val, match_classes(args, train, val, val_root)




def build_simultaneous_sets(args):
    """-lm simultaneous: (labelled training set with PH labels, validation ImageFolder, the same validation
    images with PH labels, class names)."""
    from torchvision import transforms
    from util.datasets import (IMAGENET_MEAN, IMAGENET_STD, ComputedLabels, FolderPH, LabelledPH,
                               finetune_train_parts, finetune_transforms)
    from util.vectorise import vectoriser_from_args
    computed = ComputedLabels(vectoriser_from_args(args, args.ph_dims, '-nd'), args.filtration, args.gradient,
                              args.ph_engine)
    spatial, to_tensor = finetune_train_parts(args)
    check_class_layout(args.train, '-t')
    train_set = LabelledPH(args.train, computed, spatial, to_tensor, args.persistence, args.bad_images)
    val_root = resolve_val(args)
    val_set = class_folder(val_root, finetune_transforms(args, False), 'skip', '-val')
    classes = match_classes(args, train_set, val_set, val_root)
    val_spatial = transforms.Compose([transforms.Resize(args.img_size), transforms.CenterCrop(args.crop_size)])
    val_rel = [os.path.relpath(p, val_root).replace(os.sep, '/') for p, _ in val_set.samples]
    val_ph = FolderPH(val_root, val_rel, computed, val_spatial, transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]), 'pre', bad_images='skip')
    return train_set, val_set, val_ph, classes
