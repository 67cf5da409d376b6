"""The original's algorithms written out plainly: the references that the tests compare our code with and that
the benches time ours against. Nothing here is fast on purpose; each function follows the original step by
step (float64 complex FFTs, skimage's Otsu, two scipy distance transforms, cripser with its defaults,
``np.histogram`` labels).

* the image model: :func:`formula_channels` (the float stage, redrawn while flat) and
  :func:`finish_channels` (Otsu binarisation or min-max normalisation per channel), put together by
  :func:`original_image` (numpy's ``default_rng([seed, stream, index])``, as our generator seeds) and
  :func:`original_random_image` (the global legacy ``np.random`` state reseeded from the OS, as the
  original's on-the-fly loader did);
* persistent homology: :func:`signed_distance` (the filtration of an image), :func:`original_ph_of_file`
  (PHdict's pipeline) and :func:`original_diagram` of :func:`original_filtration` (the on-the-fly loader's,
  luma grey and scaled by 256 / H);
* labels: :func:`original_histogram` with :func:`reflect_smooth`.
"""

import numpy as np
import scipy.fft
from PIL import Image
from skimage.filters import threshold_otsu

LUMA = (0.2989, 0.5870, 0.1140)
MAX_LIFE = 50.0  # the original's label defaults (also ours)
MAX_BIRTH = 50.0
BANDWIDTH = 1


# ----------------------------------------------------------------------------------------- the image model
def formula_channels(uniform, size, alpha_range, beta_range, channels=1, fft=scipy.fft):
    """The float stage: ``channels`` layers of uniform noise filtered by ``1 / (X^2 + Y^2)^beta`` on the axis
    ``linspace(1, exp(alpha) S, S)``, all redrawn while the whole sample is flat; float64 ``(C, S, S)``.

    ``uniform(low, high[, shape])``: the random source (``rng.uniform`` or ``np.random.uniform``), drawn per
    channel in the original's order: alpha, beta, noise. ``fft``: ``scipy.fft`` (the original's) or ``np.fft``.
    """
    sample = np.zeros(1)
    while sample.max() - sample.min() < 1e-10:
        layers = []
        for _ in range(channels):
            alpha = uniform(*alpha_range)
            beta = uniform(*beta_range)
            x = np.linspace(1, np.exp(alpha) * size, size)
            X, Y = np.meshgrid(x, x)
            noise = uniform(0, 1, (size, size))
            layers.append(fft.ifft2(fft.fft2(noise) / (X**2 + Y**2) ** beta).real)
        sample = np.array(layers)
    return sample


def finish_channels(sample, uniform, prob_binary):
    """Each channel of ``sample`` (float64 ``(C, S, S)``, changed in place), by a draw ``q = uniform(0, 1)``:
    ``>= otsu`` when ``q < pb/2``, ``< otsu`` when ``q < pb``, else min-max normalised.

    Returns (kinds ['ge' | 'lt' | 'norm'] per channel, Otsu thresholds (None for 'norm'), uint8 image
    ``(S, S)`` for one channel or ``(S, S, C)``).
    """
    kinds, thresholds = [], []
    for i in range(sample.shape[0]):
        q = uniform(0, 1)
        if q < prob_binary:
            t = threshold_otsu(sample[i])
            kinds.append('ge' if q < prob_binary / 2 else 'lt')
            sample[i] = sample[i] >= t if q < prob_binary / 2 else sample[i] < t
            thresholds.append(t)
        else:
            sample[i] = (sample[i] - sample[i].min()) / np.ptp(sample[i])
            kinds.append('norm')
            thresholds.append(None)
    image = (255 * sample).astype(np.uint8).transpose(1, 2, 0)
    return kinds, thresholds, image[:, :, 0] if image.shape[2] == 1 else image


def original_image(cfg, seed, index, fft=scipy.fft, stream=0):
    """Image ``index`` of ``stream`` under the original's model with the parameters of ``cfg`` (a
    :class:`util.ph.generator.GeneratorConfig`), drawn from ``np.random.default_rng([seed, stream, index])``:
    uint8 ``(S, S)`` or ``(S, S, 3)``."""
    rng = np.random.default_rng([seed, stream, index])
    channels = 3 if rng.uniform(0, 1) < cfg.prob_colour else 1
    floats = formula_channels(rng.uniform, cfg.img_size, cfg.alpha_range, cfg.beta_range, channels, fft)
    return finish_channels(floats, rng.uniform, cfg.prob_binary)[2]


def original_random_image(img_size, alpha_range, beta_range, prob_binary):
    """One greyscale image as the original on-the-fly generator made it: PIL 'L' image (S, S).

    The global legacy ``np.random`` state is reseeded from the OS for every image, as the original did.
    """
    np.random.seed()
    sample = formula_channels(np.random.uniform, img_size, alpha_range, beta_range)
    return Image.fromarray(finish_channels(sample, np.random.uniform, prob_binary)[2])


# ----------------------------------------------------------------------------------------- persistent homology
def signed_distance(grey):
    """The original's filtration of a float64 grey image: ``EDT(bw) - EDT(~bw)`` of its Otsu mask
    ``bw = grey >= threshold_otsu(grey)`` (two scipy calls), zeros for a constant image."""
    from scipy.ndimage import distance_transform_edt

    if grey.min() == grey.max():
        return np.zeros_like(grey)
    bw = grey >= threshold_otsu(grey)
    return distance_transform_edt(bw) - distance_transform_edt(~bw)


def original_ph_of_file(path):
    """PHdict's pipeline on one image file: PIL 'L' grey as float64, :func:`signed_distance`,
    ``cripser.computePH`` with its defaults; ``(n, 9)`` diagram."""
    import cripser

    return cripser.computePH(signed_distance(np.array(Image.open(path).convert('L'), dtype=np.float64)))


def original_filtration(image):
    """The original on-the-fly loader's filtration of an image (array ``(H, W)`` or ``(H, W, 3)``, or PIL
    image): luma grey in float64, :func:`signed_distance` scaled by 256 / H."""
    im = np.asarray(image, dtype=np.float64)
    if im.ndim > 2:
        im = np.dot(im[..., :3], LUMA)
    filt = signed_distance(im)
    filt *= 256 / im.shape[0]
    return filt


def original_diagram(image):
    """The original on-the-fly loader's PH of an image: ``cripser.computePH`` of :func:`original_filtration`;
    ``(n, 9)`` diagram."""
    import cripser

    return cripser.computePH(original_filtration(image))


# ----------------------------------------------------------------------------------------- labels
def reflect_smooth(y, bandwidth):
    """Hanning-window moving average of ``y`` with reflected ends (same length); identity below 2."""
    if bandwidth < 2:
        return y
    b = int(bandwidth)
    w = np.hanning(b)
    if w.sum() <= 0:  # hanning(2) is all zeros
        return y
    padded = np.concatenate([y[b - 1 : 0 : -1], y, y[-2 : -b - 1 : -1]])
    res = np.convolve(w / w.sum(), padded, mode='valid')
    c = (len(res) - len(y)) // 2
    return res[c : c + len(y)]


def original_histogram(dgm, num_bins, max_life=MAX_LIFE, max_birth=MAX_BIRTH, bandwidth=BANDWIDTH):
    """The original's histogram label of a diagram: float32 ``[sum(num_bins)]``.

    Lifetime histograms of H0/H1 (essential classes dropped, clipped to ``max_life``) weighted by
    ``1 + linspace(0, max_life)``, birth histograms weighted by lifetime on ``[-max_birth, max_birth]``,
    each smoothed, then ``log(h + 1)`` (the H0 birth part divided by 100).
    """
    pairs = [dgm[dgm[:, 0] == d, 1:3] for d in (0, 1)]
    hist = []
    for d in (0, 1):
        life = pairs[d][:, 1] - pairs[d][:, 0]
        life = np.clip(life[life < 1e10], 0, max_life)
        h, _ = np.histogram(life, bins=num_bins[d], range=(0, max_life))
        hist.append(h * (1.0 + np.linspace(0, max_life, num_bins[d])))
    for d in (0, 1):
        h, _ = np.histogram(
            pairs[d][:, 0], bins=num_bins[2 + d], range=(-max_birth, max_birth), weights=pairs[d][:, 1] - pairs[d][:, 0]
        )
        hist.append(h)
    hist = [reflect_smooth(h, bandwidth) for h in hist]
    with np.errstate(over='ignore', invalid='ignore'):  # the essential H0 class weighs ~1.8e308
        out = np.concatenate([np.log(hist[0] + 1), np.log(hist[1] + 1), np.log(hist[2] + 1) / 100, np.log(hist[3] + 1)])
    return out.astype(np.float32)
