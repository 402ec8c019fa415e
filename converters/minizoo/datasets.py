"""Dataset builders of the offline mini zoo (32x32 RGB uint8 images, built without any download).

The mini zoo mirrors Model Spider's multi-source zoo (Zhang et al., NeurIPS 2023, §1.2 of
specs/model_spider.md) at laptop scale: a few architectures are pretrained on several *source* domains,
then fine-tuned on held-out *target* domains and on many small *training tasks* for the ranker.

Every builder is a pure function of its arguments and a seed: the same call gives the same bytes.
Conventions:
  images [N, 32, 32, 3] uint8 RGB, labels [N] int64 in 0..C-1, class_names [C].
  Glyphs, digits and Fashion-MNIST are light-on-dark grayscale (replicated to 3 channels).
Data sources (see data/minizoo/README.md for licences):
  procedural (always available): shapes, shape orientation, textures;
  Debian packages: Fashion-MNIST IDX files, TrueType/OpenType fonts (glyphs, emoji);
  Python packages: scikit-learn's handwritten digits and sample photos, scikit-image's photos.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import os
import pathlib
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 32
# Glyphs and shapes are drawn on a 2x canvas and downsampled, which anti-aliases them.
_CANVAS = 2 * IMAGE_SIZE
FONT_ROOT = pathlib.Path(os.environ.get("MSPIDER_FONT_ROOT", "/usr/share/fonts"))
FASHION_MNIST_ROOT = pathlib.Path(
    os.environ.get("MSPIDER_FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist"))
# An unassigned code point: a font renders it with its "missing glyph" shape (.notdef).
_UNASSIGNED = "\u0378"


def derive_seed(*parts: object) -> int:
    """A 32-bit seed derived from names (sha256), stable across Python runs and machines."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclasses.dataclass
class ImageSet:
    """A labelled image set.

    Attributes:
      images: [N, 32, 32, 3] uint8.
      labels: [N] int64 in 0..C-1.
      class_names: [C] names.
      grayscale: True when the three channels are equal (stored as one channel when shipped).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    grayscale: bool = False

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int64)
        if self.images.dtype != np.uint8 or self.images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(f"images must be [N, 32, 32, 3] uint8, got {self.images.shape} "
                             f"{self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels {self.labels.shape} do not match {self.images.shape[0]} images")
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"labels outside 0..{len(self.class_names) - 1}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def take(self, index: np.ndarray) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], list(self.class_names), self.grayscale)

    def split(self, test_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
        """Stratified random split (every class shuffled first), returns (train, test), each shuffled."""
        rng = np.random.default_rng(seed)
        train, test = [], []
        for label in range(self.num_classes):
            index = rng.permutation(np.flatnonzero(self.labels == label))
            num_test = int(round(test_fraction * len(index)))
            test.append(index[:num_test])
            train.append(index[num_test:])
        train_index = rng.permutation(np.concatenate(train))
        test_index = rng.permutation(np.concatenate(test))
        return self.take(train_index), self.take(test_index)

    def select_classes(self, classes: Sequence[int]) -> ImageSet:
        """Keeps the given classes, relabelled 0..len(classes)-1 in the given order."""
        remap = np.full(self.num_classes, -1, np.int64)
        remap[np.asarray(classes)] = np.arange(len(classes))
        keep = np.flatnonzero(remap[self.labels] >= 0)
        return ImageSet(self.images[keep], remap[self.labels[keep]],
                        [self.class_names[c] for c in classes], self.grayscale)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Compact arrays for an .npz: grayscale sets keep one channel."""
        images = self.images[..., :1] if self.grayscale else self.images
        return dict(images=images, labels=self.labels, class_names=np.asarray(self.class_names),
                    grayscale=np.asarray(self.grayscale))

    @classmethod
    def from_arrays(cls, arrays) -> ImageSet:
        images = np.asarray(arrays["images"])
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        return cls(images, arrays["labels"], [str(c) for c in arrays["class_names"]],
                   bool(arrays["grayscale"]))


def concatenate(sets: Sequence[ImageSet], prefixes: Sequence[str] | None = None) -> ImageSet:
    """Union of image sets with disjoint label spaces (labels offset, names optionally prefixed)."""
    images, labels, names, offset = [], [], [], 0
    for i, image_set in enumerate(sets):
        images.append(image_set.images)
        labels.append(image_set.labels + offset)
        prefix = f"{prefixes[i]}:" if prefixes else ""
        names += [prefix + n for n in image_set.class_names]
        offset += image_set.num_classes
    return ImageSet(np.concatenate(images), np.concatenate(labels), names,
                    all(s.grayscale for s in sets))


def _to_rgb_gray(gray: np.ndarray) -> np.ndarray:
    """[N, 32, 32] uint8 -> [N, 32, 32, 3]."""
    return np.repeat(gray[..., None], 3, axis=-1)


def _downsample(canvas: Image.Image) -> np.ndarray:
    return np.asarray(canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX))


# ----------------------------------------------------------------------------------------------
# Glyphs rendered from fonts.


@functools.lru_cache(maxsize=None)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _render_plain(char: str, path: str) -> np.ndarray:
    font = _font(path, 40)
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    ImageDraw.Draw(canvas).text((_CANVAS // 2, _CANVAS // 2), char, fill=255, font=font, anchor="mm")
    return np.asarray(canvas)


@functools.lru_cache(maxsize=None)
def has_glyph(path: str, char: str) -> bool:
    """True when the font draws `char` with a real glyph (not blank, not its missing-glyph shape)."""
    try:
        drawn = _render_plain(char, path)
    except OSError:
        return False
    if drawn.max() < 128:
        return False
    return not np.array_equal(drawn, _render_plain(_UNASSIGNED, path))


def find_fonts(patterns: Sequence[str], root: pathlib.Path | None = None) -> list[str]:
    """Font files under `root` matching any glob pattern, sorted (deterministic order)."""
    root = FONT_ROOT if root is None else root
    found = set()
    for pattern in patterns:
        found.update(str(p) for p in root.glob(pattern))
    return sorted(found)


def _render_glyph(char: str, path: str, rng: np.random.Generator) -> np.ndarray:
    """One jittered rendering: [32, 32] uint8 (scale, stroke, rotation, shift drawn from rng)."""
    size = int(rng.integers(30, 46))
    stroke = int(rng.integers(0, 3))
    font = _font(path, size)
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    ImageDraw.Draw(canvas).text((_CANVAS // 2, _CANVAS // 2), char, fill=255, font=font, anchor="mm",
                                stroke_width=stroke, stroke_fill=255)
    bbox = canvas.getbbox()
    if bbox is not None:  # re-centre the ink, then shift by a few pixels
        left, top, right, bottom = bbox
        dx = _CANVAS // 2 - (left + right) // 2 + int(rng.integers(-4, 5))
        dy = _CANVAS // 2 - (top + bottom) // 2 + int(rng.integers(-4, 5))
        canvas = canvas.transform(canvas.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy))
    canvas = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR)
    return _downsample(canvas)


def glyph_domain(chars: Sequence[str], fonts: Sequence[str], per_class: int, seed: int,
                 class_names: Sequence[str] | None = None, min_fonts: int = 1) -> ImageSet:
    """Glyph classification: one class per character, samples rendered in random covering fonts.

    Characters covered by fewer than `min_fonts` of the fonts are dropped (so the class list can be
    shorter than `chars`; class names say which characters were kept).
    """
    rng = np.random.default_rng(seed)
    names = list(class_names) if class_names is not None else [f"U+{ord(c):04X}" for c in chars]
    images, labels, kept = [], [], []
    for char, name in zip(chars, names):
        covering = [f for f in fonts if has_glyph(f, char)]
        if len(covering) < min_fonts:
            continue
        for _ in range(per_class):
            images.append(_render_glyph(char, covering[int(rng.integers(len(covering)))], rng))
            labels.append(len(kept))
        kept.append(name)
    if not kept:
        raise ValueError(f"no character of {chars[:5]}... is drawn by the fonts {fonts[:3]}...")
    return ImageSet(_to_rgb_gray(np.stack(images)), np.asarray(labels), kept, grayscale=True)


def char_range(first: int, last: int, skip: Sequence[int] = ()) -> list[str]:
    return [chr(c) for c in range(first, last + 1) if c not in skip]


# Fonts by role. Latin print fonts (sources), handwriting fonts (a target only).
LATIN_FONT_PATTERNS = (
    "truetype/dejavu/DejaVuSans*.ttf", "truetype/dejavu/DejaVuSerif*.ttf",
    "truetype/liberation/*.ttf", "truetype/freefont/*.ttf",
    "opentype/urw-base35/[CNPU]*.otf", "truetype/noto/NotoSans-*.ttf",
    "truetype/noto/NotoSerif-*.ttf", "truetype/noto/NotoSansDisplay-*.ttf",
    "truetype/noto/NotoSerifDisplay-*.ttf",
)
HANDWRITING_FONT_PATTERNS = (
    "opentype/bwht/*.otf", "truetype/fifthhorseman/*.ttf", "truetype/humor-sans/*.ttf",
)


def _noto(*families: str) -> tuple[str, ...]:
    return tuple(f"truetype/noto/{family}-*.ttf" for family in families)


# name -> (characters, font patterns). Devanagari is a pretraining source (and a training-task domain),
# Gurmukhi (a script related to Devanagari) a target; the others feed the ranker's training tasks.
SCRIPTS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "gurmukhi": (char_range(0x0A15, 0x0A39, skip=(0x0A29, 0x0A31, 0x0A34, 0x0A37)),
                 _noto("NotoSansGurmukhi", "NotoSerifGurmukhi")),
    "devanagari": (char_range(0x0905, 0x0939, skip=(0x090D, 0x090E, 0x0911, 0x0912, 0x0929, 0x0931,
                                                    0x0934)),
                   _noto("NotoSansDevanagari", "NotoSerifDevanagari") + ("truetype/freefont/*.ttf",)),
    "armenian": (char_range(0x0531, 0x0556), _noto("NotoSansArmenian", "NotoSerifArmenian")),
    "georgian": (char_range(0x10D0, 0x10F0), _noto("NotoSansGeorgian", "NotoSerifGeorgian")),
    "hebrew": (char_range(0x05D0, 0x05EA, skip=(0x05DA, 0x05DD, 0x05DF, 0x05E3, 0x05E5)),
               _noto("NotoSansHebrew", "NotoSerifHebrew", "NotoRashiHebrew")),
    "ethiopic": ([chr(0x1200 + 8 * i) for i in range(40)], _noto("NotoSansEthiopic", "NotoSerifEthiopic")),
    "cherokee": (char_range(0x13A0, 0x13C7), _noto("NotoSansCherokee")),
    "thai": (char_range(0x0E01, 0x0E2E), _noto("NotoSansThai", "NotoSerifThai", "NotoLoopedThai")),
    "tamil": (char_range(0x0B85, 0x0BB9, skip=(0x0B8B, 0x0B8C, 0x0B8D, 0x0B91, 0x0B96, 0x0B97, 0x0B98,
                                              0x0B9B, 0x0B9D, 0x0BA0, 0x0BA1, 0x0BA2, 0x0BA5, 0x0BA6,
                                              0x0BA7, 0x0BAB, 0x0BAC, 0x0BAD)),
              _noto("NotoSansTamil", "NotoSerifTamil")),
    "bengali": (char_range(0x0995, 0x09B9, skip=(0x09A9, 0x09B1, 0x09B3, 0x09B4, 0x09B5)),
                _noto("NotoSansBengali", "NotoSerifBengali")),
    "runic": (char_range(0x16A0, 0x16C7), _noto("NotoSansRunic")),
    "glagolitic": (char_range(0x2C00, 0x2C25), _noto("NotoSansGlagolitic")),
    "tifinagh": (char_range(0x2D30, 0x2D55), _noto("NotoSansTifinagh")),
    "canadian": ([chr(0x1401 + 3 * i) for i in range(36)], _noto("NotoSansCanadianAboriginal")),
    "gujarati": (char_range(0x0A95, 0x0AB9, skip=(0x0AA9, 0x0AB1, 0x0AB4)),
                 _noto("NotoSansGujarati", "NotoSerifGujarati")),
    "thaana": (char_range(0x0780, 0x07A5), _noto("NotoSansThaana")),
    "khmer": (char_range(0x1780, 0x17A2), _noto("NotoSansKhmer", "NotoSerifKhmer")),
}

GREEK_LOWER = char_range(0x03B1, 0x03C9, skip=(0x03C2,))  # alpha..omega without final sigma
CYRILLIC_UPPER = char_range(0x0410, 0x042F)
LATIN_UPPER = char_range(ord("A"), ord("Z"))
LATIN_LOWER = char_range(ord("a"), ord("z"))


def latin_domain(per_class: int, seed: int) -> ImageSet:
    """Source: the 26 upper-case Latin letters in ~80 print fonts."""
    return glyph_domain(LATIN_UPPER, find_fonts(LATIN_FONT_PATTERNS), per_class, seed, LATIN_UPPER)


def script_domain(script: str, per_class: int, seed: int, max_classes: int = 40) -> ImageSet:
    """Letters of one Noto script (characters drawn by at least one of the script's fonts)."""
    chars, patterns = SCRIPTS[script]
    chars = chars[:max_classes]
    return glyph_domain(chars, find_fonts(patterns), per_class, seed)


def greek_domain(per_class: int, seed: int) -> ImageSet:
    """Target: the 24 lower-case Greek letters in print fonts."""
    return glyph_domain(GREEK_LOWER, find_fonts(LATIN_FONT_PATTERNS), per_class, seed, min_fonts=5)


def cyrillic_domain(per_class: int, seed: int) -> ImageSet:
    """Target: the 32 upper-case Cyrillic letters (without Yo) in print fonts."""
    return glyph_domain(CYRILLIC_UPPER, find_fonts(LATIN_FONT_PATTERNS), per_class, seed, min_fonts=5)


def handwriting_domain(per_class: int, seed: int) -> ImageSet:
    """Target: the 26 lower-case Latin letters in handwriting fonts only."""
    return glyph_domain(LATIN_LOWER, find_fonts(HANDWRITING_FONT_PATTERNS), per_class, seed,
                        LATIN_LOWER)


# ----------------------------------------------------------------------------------------------
# Emoji (Noto Color Emoji, a bitmap font drawn at its single strike size 109).

EMOJI_FONT = "truetype/noto/NotoColorEmoji.ttf"
EMOJI_CATEGORIES: dict[str, list[int]] = {
    "faces": list(range(0x1F600, 0x1F637)),
    "animals": list(range(0x1F400, 0x1F43D)),
    "food": list(range(0x1F345, 0x1F37C)),
    "transport": list(range(0x1F680, 0x1F6A4)),
    "plants_weather": list(range(0x1F330, 0x1F344)) + list(range(0x1F324, 0x1F32D)),
}


@functools.lru_cache(maxsize=None)
def _emoji_bitmap(codepoint: int, font_path: str) -> np.ndarray | None:
    """RGBA [h, w, 4] uint8 of one emoji cropped to its ink, or None when the font lacks it."""
    font = _font(font_path, 109)
    canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((80, 80), chr(codepoint), font=font, anchor="mm", embedded_color=True)
    bbox = canvas.getbbox()
    if bbox is None:
        return None
    array = np.asarray(canvas.crop(bbox))
    # The missing-glyph shape of this font is a monochrome box; real emoji are coloured.
    rgb = array[..., :3].astype(np.int16)
    if (np.abs(rgb - rgb.mean(-1, keepdims=True)).max() < 30):
        return None
    return array


def emoji_domain(per_class: int, seed: int) -> ImageSet:
    """Target: emoji categories (faces, animals, food, transport, plants/weather) on random backgrounds."""
    rng = np.random.default_rng(seed)
    font_path = str(FONT_ROOT / EMOJI_FONT)
    images, labels, names = [], [], []
    for label, (name, codepoints) in enumerate(EMOJI_CATEGORIES.items()):
        bitmaps = [b for b in (_emoji_bitmap(c, font_path) for c in codepoints) if b is not None]
        if len(bitmaps) < 5:
            raise ValueError(f"emoji font {font_path} draws only {len(bitmaps)} emoji of {name}")
        names.append(name)
        for _ in range(per_class):
            bitmap = Image.fromarray(bitmaps[int(rng.integers(len(bitmaps)))])
            side = int(rng.integers(36, 60))
            bitmap = bitmap.resize((side, side), Image.Resampling.BILINEAR)
            bitmap = bitmap.rotate(float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR,
                                   expand=True)
            background = tuple(int(v) for v in rng.integers(0, 256, 3))
            canvas = Image.new("RGBA", (_CANVAS, _CANVAS), background + (255,))
            x = (_CANVAS - bitmap.width) // 2 + int(rng.integers(-6, 7))
            y = (_CANVAS - bitmap.height) // 2 + int(rng.integers(-6, 7))
            canvas.alpha_composite(bitmap, (max(x, 0), max(y, 0)))
            images.append(_downsample(canvas.convert("RGB")))
            labels.append(label)
    return ImageSet(np.stack(images), np.asarray(labels), names)


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST (Debian package dataset-fashion-mnist) and scikit-learn's handwritten digits.

FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                   "bag", "ankle_boot"]
# Coarse relabelling used by a target: tops / one-piece & legwear / footwear / bags.
FASHION_COARSE = {"top": (0, 2, 4, 6), "trouser_dress": (1, 3), "footwear": (5, 7, 9), "bag": (8,)}


def _read_idx(path: pathlib.Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    try:
        images = _read_idx(FASHION_MNIST_ROOT / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(FASHION_MNIST_ROOT / f"{prefix}-labels-idx1-ubyte.gz")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"Fashion-MNIST not found under {FASHION_MNIST_ROOT} "
                                "(apt-get install dataset-fashion-mnist)") from err
    return images, labels.astype(np.int64)


def _pad28(images: np.ndarray) -> np.ndarray:
    """[N, 28, 28] -> [N, 32, 32, 3] by zero padding (the background is black)."""
    return _to_rgb_gray(np.pad(images, ((0, 0), (2, 2), (2, 2))))


def fashion_domain(part: str, seed: int, num: int) -> ImageSet:
    """Fashion-MNIST (10 classes). `part` selects disjoint image pools so sources, training tasks and
    targets never share an image: "source" and "tasks" are disjoint halves of the official train
    split; "coarse_target" uses the official test split with the 4 coarse classes of FASHION_COARSE."""
    rng = np.random.default_rng(seed)
    if part in ("source", "tasks"):
        images, labels = _fashion_split("train")
        order = np.random.default_rng(0).permutation(len(labels))  # fixed halves, seed-independent
        pool = order[:30000] if part == "source" else order[30000:]
        pick = rng.choice(pool, size=num, replace=False)
        return ImageSet(_pad28(images[pick]), labels[pick], FASHION_CLASSES, grayscale=True)
    if part == "coarse_target":
        images, labels = _fashion_split("test")
        coarse = np.zeros(10, np.int64)
        for new_label, old_labels in enumerate(FASHION_COARSE.values()):
            coarse[list(old_labels)] = new_label
        pick = rng.choice(len(labels), size=num, replace=False)
        return ImageSet(_pad28(images[pick]), coarse[labels[pick]], list(FASHION_COARSE), grayscale=True)
    raise ValueError(f"unknown Fashion-MNIST part {part!r}")


def digits_domain(seed: int) -> ImageSet:
    """Target: scikit-learn's 1797 real handwritten digits (8x8, 17 grey levels) upsampled to 32x32."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    small = (digits.images[order] * (255.0 / 16.0)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.Resampling.BILINEAR))
                    for im in small])
    return ImageSet(_pad28(big), digits.target[order], [str(d) for d in range(10)], grayscale=True)


# ----------------------------------------------------------------------------------------------
# Photo patches (scikit-learn and scikit-image bundled photos).

PHOTO_SOURCE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "china", "flower",
                       "ihc", "hubble_deep_field", "retina")
# Grayscale photos and texture photos, none used by the photo source: a held-out target.
PATCH_TARGET_IMAGES = ("camera", "coins", "moon", "page", "text", "brick", "grass", "gravel", "cell",
                       "clock_motion")


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """[H, W, 3] uint8 of a bundled photo (scikit-learn sample images or scikit-image's data files)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        photo = load_sample_image(f"{name}.jpg")
    else:
        import skimage

        folder = pathlib.Path(skimage.__file__).parent / "data"
        candidates = sorted(folder.glob(f"{name}.*"))
        if not candidates:
            raise FileNotFoundError(f"scikit-image data file {name}.* not found in {folder}")
        photo = np.asarray(Image.open(candidates[0]))
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=-1)
    return np.ascontiguousarray(photo[..., :3].astype(np.uint8))


def photo_patch_domain(image_names: Sequence[str], per_class: int, seed: int,
                       grayscale: bool = False) -> ImageSet:
    """Which photo does a random patch (random size, position, flip) come from? One class per photo."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(image_names):
        photo = load_photo(name)
        height, width = photo.shape[:2]
        for _ in range(per_class):
            side = int(rng.integers(32, min(height, width, 160) + 1))
            top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            patch = Image.fromarray(photo[top:top + side, left:left + side])
            patch = np.asarray(patch.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX))
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            images.append(patch)
            labels.append(label)
    images = np.stack(images)
    if grayscale:
        images = _to_rgb_gray(images.mean(-1).round().astype(np.uint8))
    return ImageSet(images, np.asarray(labels), list(image_names), grayscale)


# ----------------------------------------------------------------------------------------------
# Procedural domains (no external data): shapes, shape orientation, textures.

def _polygon(name: str) -> np.ndarray:
    """Outline of a shape as [K, 2] points in the unit disc."""
    angles = lambda k, start=0.0: start + 2 * np.pi * np.arange(k) / k  # noqa: E731
    circle = lambda k, r=1.0, start=0.0: r * np.stack([np.cos(angles(k, start)),  # noqa: E731
                                                         np.sin(angles(k, start))], 1)
    if name == "circle":
        return circle(48)
    if name == "ellipse":
        return circle(48) * np.array([1.0, 0.5])
    if name == "square":
        return circle(4, start=np.pi / 4)
    if name == "triangle":
        return circle(3, start=-np.pi / 2)
    if name == "hexagon":
        return circle(6)
    if name == "star":
        outer, inner = circle(5, 1.0, -np.pi / 2), circle(5, 0.4, -np.pi / 2 + np.pi / 5)
        return np.stack([outer, inner], 1).reshape(-1, 2)
    if name == "cross":
        a, b = 0.33, 1.0
        return np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b],
                         [-a, a], [-b, a], [-b, -a], [-a, -a]])
    if name == "heart":
        t = angles(48)
        points = np.stack([16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t)
                                                  - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)
        return points / 17.0
    if name == "arrow":  # asymmetric: its orientation is recoverable
        return np.array([[1.0, 0.0], [0.2, -0.6], [0.2, -0.25], [-1.0, -0.25], [-1.0, 0.25],
                         [0.2, 0.25], [0.2, 0.6]])
    raise ValueError(f"unknown shape {name!r}")


SHAPES = ("circle", "ellipse", "square", "triangle", "hexagon", "star", "cross", "heart")


def _draw_shape(name: str, angle: float, rng: np.random.Generator, background_noise: bool) -> np.ndarray:
    scale = rng.uniform(0.35, 0.8) * _CANVAS / 2
    centre = _CANVAS / 2 + rng.uniform(-0.15, 0.15, 2) * _CANVAS
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = _polygon(name) @ rotation.T * scale + centre
    background = rng.integers(0, 110, 3)
    foreground = rng.integers(140, 256, 3)
    canvas = Image.new("RGB", (_CANVAS, _CANVAS), tuple(int(v) for v in background))
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=tuple(int(v) for v in foreground))
    image = _downsample(canvas).astype(np.int16)
    if background_noise:
        image = image + rng.normal(0, 12, image.shape).round().astype(np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def shapes_domain(per_class: int, seed: int, shapes: Sequence[str] = SHAPES) -> ImageSet:
    """dSprites-like: which shape (random size, position, rotation, colours, pixel noise)?"""
    rng = np.random.default_rng(seed)
    images = [_draw_shape(name, rng.uniform(0, 2 * np.pi), rng, True)
              for name in shapes for _ in range(per_class)]
    labels = np.repeat(np.arange(len(shapes)), per_class)
    return ImageSet(np.stack(images), labels, list(shapes))


def orientation_domain(per_class: int, seed: int, num_bins: int = 8) -> ImageSet:
    """Target: in which of `num_bins` directions does an arrow point (+-10 degrees of jitter)?"""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(num_bins):
        for _ in range(per_class):
            angle = 2 * np.pi * label / num_bins + np.deg2rad(rng.uniform(-10, 10))
            images.append(_draw_shape("arrow", angle, rng, True))
            labels.append(label)
    return ImageSet(np.stack(images), np.asarray(labels), [f"{360 * b // num_bins}deg"
                                                           for b in range(num_bins)])


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """[32, 32] value noise in [0, 1]: a random cells x cells grid upsampled bicubically."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))
    return field / 255.0


def _texture_field(name: str, rng: np.random.Generator) -> np.ndarray:
    """[32, 32] float pattern in [0, 1] of one texture family, with random parameters."""
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    theta = rng.uniform(0, np.pi)
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    period = rng.uniform(4, 10)
    phase = rng.uniform(0, 2 * np.pi)
    if name == "stripes":
        return (np.sin(2 * np.pi * u / period + phase) > 0).astype(float)
    if name == "waves":
        return 0.5 + 0.5 * np.sin(2 * np.pi * u / period + 2.0 * np.sin(2 * np.pi * v / (2 * period)))
    if name == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(float)
    if name == "dots":
        du = (u / period) % 1 - 0.5
        dv = (v / period) % 1 - 0.5
        return (du ** 2 + dv ** 2 < rng.uniform(0.04, 0.12)).astype(float)
    if name == "rings":
        cx, cy = rng.uniform(0, IMAGE_SIZE, 2)
        return 0.5 + 0.5 * np.sin(2 * np.pi * np.hypot(x - cx, y - cy) / period + phase)
    if name == "crosshatch":
        return np.maximum(np.sin(2 * np.pi * u / period) > 0.6, np.sin(2 * np.pi * v / period) > 0.6
                          ).astype(float)
    if name == "cells":  # Voronoi distance
        seeds = rng.uniform(-4, IMAGE_SIZE + 4, (int(rng.integers(6, 14)), 2))
        distance = np.min(np.hypot(x[..., None] - seeds[:, 0], y[..., None] - seeds[:, 1]), -1)
        return np.clip(distance / 8.0, 0, 1)
    if name == "bricks":
        row = np.floor(v / period)
        shifted = u + (row % 2) * period
        mortar = ((v % period) < 1.2) | ((shifted % (2 * period)) < 1.2)
        return (~mortar).astype(float)
    if name == "noise":
        return _smooth_noise(rng, int(rng.integers(4, 9)))
    if name == "zigzag":
        return (np.abs(((u / period + np.abs((v / period) % 2 - 1)) % 1) - 0.5) < 0.25).astype(float)
    raise ValueError(f"unknown texture {name!r}")


TEXTURES = ("stripes", "waves", "checker", "dots", "rings", "crosshatch", "cells", "bricks", "noise",
            "zigzag")


def textures_domain(per_class: int, seed: int, textures: Sequence[str] = TEXTURES) -> ImageSet:
    """Which texture family (random scale, orientation, phase, two random colours, noise)?"""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(textures):
        for _ in range(per_class):
            field = _texture_field(name, rng)[..., None]
            low, high = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            image = low + field * (high.astype(float) - low) + rng.normal(0, 10, (IMAGE_SIZE, IMAGE_SIZE, 3))
            images.append(np.clip(image.round(), 0, 255).astype(np.uint8))
            labels.append(label)
    return ImageSet(np.stack(images), np.asarray(labels), list(textures))


# ----------------------------------------------------------------------------------------------
# Registry: every domain by name, as a function (num_per_class, seed) -> ImageSet.

Builder = Callable[[int, int], ImageSet]


DOMAINS: dict[str, Builder] = {
    # Pretraining sources (and source-side training-task domains).
    "fmnist": lambda n, s: fashion_domain("source", s, 10 * n),
    "fmnist_tasks": lambda n, s: fashion_domain("tasks", s, 10 * n),
    "latin": latin_domain,
    "photo": lambda n, s: photo_patch_domain(PHOTO_SOURCE_IMAGES, n, s),
    # Training-task domain: the source photos' patches in grayscale (a colour shift, not new images).
    "photo_gray": lambda n, s: photo_patch_domain(PHOTO_SOURCE_IMAGES, n, s, grayscale=True),
    "shapes": shapes_domain,
    "textures": textures_domain,
    # Targets.
    "digits": lambda n, s: digits_domain(s),
    "greek": greek_domain,
    "cyrillic": cyrillic_domain,
    "handwriting": handwriting_domain,
    "emoji": emoji_domain,
    "patches": lambda n, s: photo_patch_domain(PATCH_TARGET_IMAGES, n, s, grayscale=True),
    "fmnist_coarse": lambda n, s: fashion_domain("coarse_target", s, 4 * n),
    "orientation": orientation_domain,
}
DOMAINS.update({script: functools.partial(lambda n, s, script: script_domain(script, n, s),
                                          script=script) for script in SCRIPTS})
# Domains that need nothing but numpy and Pillow (the tiny test build uses only these).
PROCEDURAL_DOMAINS = ("shapes", "textures", "orientation")


def build_domain(name: str, per_class: int, seed: int) -> ImageSet:
    """Builds domain `name` with about `per_class` images per class (digits: all 1797 images)."""
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; known: {sorted(DOMAINS)}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    return DOMAINS[name](per_class, seed)
