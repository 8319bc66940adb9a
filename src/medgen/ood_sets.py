"""Out-of-distribution image sets for the input guard (issue #18), built from material that ships in packages.

Far sets (nothing like a scan), each split into a *selection* half (chooses the guard's method, with held-out
training rows as the in-distribution side) and a *report* half (scored once against test):
  * digits:   scikit-learn's bundled 8x8 handwritten digits, upsampled (bilinear) to the images' side;
  * patches:  scikit-image's bundled sample photographs in grey (cat() is chelsea(): used once), short side
              resized to 3x the images' side, cut into non-overlapping side x side patches, flat ones dropped
              (selection and report use different photographs);
  * constant: uniform images of evenly spaced grey levels (alternate levels per half);
  * noise:    uniform and Gaussian pixel noise (different seeds per half).
Corruptions of given images (selection: held-out training rows; report: test): colour inversion, heavy
Gaussian blur (sigma = side / 9), rotation by 90 degrees.
Every set is uint8 in the layout of the data (N, S, S) for grey or (N, S, S, C), grey replicated to C.
`guard.ood_max` > 0 cuts every set (and each fold's or test's corruptions) to that many images, evenly spaced
(`capped`): the smoke profile's 64 keeps the guard's cost small for tests; the default 0 uses every image.
"""

from __future__ import annotations

import numpy as np

FAR = ("digits", "patches", "constant", "noise")
CORRUPTIONS = ("inverted", "blur", "rot90")
PHOTOS = (
    "astronaut", "camera", "coins", "moon", "page", "text", "coffee", "chelsea", "rocket", "clock",
    "cell", "hubble_deep_field", "immunohistochemistry", "microaneurysms", "retina", "grass", "gravel",
    "brick", "checkerboard",
)  # fmt: skip
PARTS = ("selection", "report")


def _layout(grey: np.ndarray, channels: int) -> np.ndarray:
    """float (N, S, S) in [0, 1] -> uint8 (N, S, S) or (N, S, S, C)."""
    images = np.round(np.clip(grey, 0.0, 1.0) * 255.0).astype(np.uint8)
    return images if channels == 1 else np.repeat(images[..., None], channels, axis=3)


def _digits(side: int, part: int) -> np.ndarray:
    from skimage.transform import resize
    from sklearn.datasets import load_digits

    digits = load_digits().images[part::2] / 16.0  # (N, 8, 8) in [0, 1]
    return np.stack([resize(d, (side, side), order=1, anti_aliasing=False) for d in digits])


def _patches(side: int, part: int) -> np.ndarray:
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import resize
    from skimage.util import img_as_float

    patches = []
    for name in PHOTOS[part::2]:
        photo = img_as_float(getattr(skimage.data, name)())
        photo = rgb2gray(photo[..., :3]) if photo.ndim == 3 else photo
        scale = 3 * side / min(photo.shape)
        photo = resize(photo, (round(photo.shape[0] * scale), round(photo.shape[1] * scale)), anti_aliasing=True)
        for i in range(0, photo.shape[0] - side + 1, side):
            for j in range(0, photo.shape[1] - side + 1, side):
                patch = photo[i : i + side, j : j + side]
                if patch.std() > 0.02:  # flat patches (borders, black sky) are the constant set's business
                    patches.append(patch)
    return np.stack(patches)


def far(shape: tuple[int, int, int], part: str) -> dict[str, np.ndarray]:
    """The far sets for images of shape (C, S, S), half `part` ("selection" or "report")."""
    channels, side = shape[0], shape[1]
    half = PARTS.index(part)
    rng = np.random.default_rng(1000 + half)
    levels = np.linspace(0.0, 1.0, 32)[half::2]
    noise = np.concatenate([rng.uniform(0, 1, (48, side, side)), rng.normal(0.5, 0.2, (48, side, side))])
    sets = {
        "digits": _digits(side, half),
        "patches": _patches(side, half),
        "constant": np.broadcast_to(levels[:, None, None], (len(levels), side, side)),
        "noise": noise,
    }
    return {name: _layout(images, channels) for name, images in sets.items()}


def spaced(images: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` of the images, evenly spaced through the set (first and last kept); all when limit is 0."""
    if limit <= 0 or len(images) <= limit:
        return images
    return images[np.linspace(0, len(images) - 1, limit).round().astype(np.int64)]


def capped(sets: dict[str, np.ndarray], limit: int) -> dict[str, np.ndarray]:
    """Every set cut to at most `limit` images (`spaced`); unchanged when limit is 0."""
    return {name: spaced(images, limit) for name, images in sets.items()}


def corruptions(images: np.ndarray) -> dict[str, np.ndarray]:
    """inverted, blurred and 90-degree-rotated copies of uint8 images (N, S, S[, C]), same layout."""
    from scipy.ndimage import gaussian_filter

    side = images.shape[1]
    sigma = (0, side / 9, side / 9) + ((0,) if images.ndim == 4 else ())
    blurred = gaussian_filter(images.astype(np.float64), sigma=sigma, mode="nearest")
    return {
        "inverted": 255 - images,
        "blur": np.round(blurred).clip(0, 255).astype(np.uint8),
        "rot90": np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2))),
    }
