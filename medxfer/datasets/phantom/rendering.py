"""Rendering a synthetic PA chest radiograph: anatomy, optional opacities and a site's detector."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medxfer.datasets.phantom.sites import LABELS, SiteProfile

_RIB_FIRST, _RIB_GAP, _RIB_COUNT = -0.66, 0.11, 8  # posterior ribs: first arc height, spacing, count


def _soft(signed: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-mask from a signed field (negative inside): 1 inside, 0 outside, linear edge."""
    return np.clip(0.5 - signed / edge, 0.0, 1.0)


def superellipse_level(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float | np.ndarray, ay: float,
                      power: int = 2, angle: float = 0.0) -> np.ndarray:
    """Superellipse level ``|dx/ax|**power + |dy/ay|**power`` (even ``power``) of the shape centred
    on (cx, cy) with semi-axes (ax, ay), rotated by ``angle`` radians: < 1 inside, 1 on the edge."""
    dx, dy = x - cx, y - cy
    if angle:
        cos, sin = float(np.cos(angle)), float(np.sin(angle))
        dx, dy = dx * cos + dy * sin, dy * cos - dx * sin
    return np.square(dx / ax) ** (power // 2) + np.square(dy / ay) ** (power // 2)


def _inside(level: np.ndarray, power: int, edge: float) -> np.ndarray:
    """Soft mask of a superellipse from its ``superellipse_level``; ``edge`` is the ramp width in
    radius units."""
    return _soft((level - 1.0) / power, edge)


def _grid(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Anatomical coordinates of every pixel and the pixels per coordinate unit.

    The shorter image side spans [-1, 1]; x grows to the image right (patient's left in a PA view),
    y grows downwards. A random rotation (up to 3 degrees), scale (up to 4 %) and shift (up to
    4 % of the short side) model patient positioning.
    """
    rows, cols = shape
    unit = min(rows, cols) / 2.0
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    u, v = (xx - cols / 2.0) / unit, (yy - rows / 2.0) / unit
    angle = np.deg2rad(rng.uniform(-3.0, 3.0))
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    scale = rng.uniform(0.96, 1.04)
    sx, sy = (float(s) for s in rng.uniform(-0.04, 0.04, size=2))
    x = (cos * u + sin * v) / scale + sx
    y = (cos * v - sin * u) / scale + sy
    return x, y, unit


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise normalised to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_px)
    return field / max(float(field.std()), 1e-6)


def _lungs(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks of both lung fields (left and right of the image) and of the heart, in [0, 1]."""
    lungs = np.zeros_like(x)
    half_width, top, height = rng.uniform(0.27, 0.32), rng.uniform(-0.78, -0.70), rng.uniform(1.1, 1.25)
    for side, dome_base in ((-1.0, rng.uniform(0.30, 0.38)), (1.0, rng.uniform(0.36, 0.44))):
        cx, cy = side * rng.uniform(0.39, 0.44), top + height / 2.0
        taper = 0.7 + 0.4 * np.clip((y - top) / height, 0.0, 1.0)  # narrow apex, wide base
        outline = _inside(superellipse_level(x, y, cx, cy, half_width * taper, height / 2.0), 2, 0.04)
        dome = dome_base + 0.18 * np.square((x - cx) / 0.34)  # diaphragm, highest mid-lung
        lungs = np.maximum(lungs, outline * _soft(y - dome, 0.03))
    heart = _inside(superellipse_level(x, y, rng.uniform(0.08, 0.14), rng.uniform(0.2, 0.26),
                           rng.uniform(0.3, 0.36), rng.uniform(0.22, 0.27), angle=-0.45), 2, 0.1)
    return lungs * (1.0 - heart), heart


def _bones(x: np.ndarray, y: np.ndarray, trunk: np.ndarray) -> np.ndarray:
    """Spine, posterior ribs and clavicles as an additive attenuation map (about 0 to 0.25)."""
    spine = _soft(np.abs(x) - 0.06, 0.02) * (0.08 + 0.03 * np.cos(2.0 * np.pi * y / 0.12))
    lateral = np.abs(x)
    rib_span = _soft(np.abs(lateral - 0.48) - 0.38, 0.08)
    along = y + 0.45 * lateral - 0.75 * np.square(lateral)  # constant along one rib's arc
    phase = (along - _RIB_FIRST) / _RIB_GAP
    ribs = _soft(np.abs(phase - np.rint(phase)) * _RIB_GAP - 0.02, 0.02)
    ribs *= _soft(np.abs(phase - (_RIB_COUNT - 1) / 2.0) - _RIB_COUNT / 2.0, 0.3) * rib_span
    clavicle_centre = -0.74 - 0.12 * lateral + 0.25 * np.square(lateral)
    clavicles = _soft(np.abs(y - clavicle_centre) - 0.028, 0.02) * _soft(np.abs(lateral - 0.36) - 0.3, 0.04)
    return (spine + 0.06 * ribs + 0.1 * clavicles) * trunk


def _anatomy(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, unit: float) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation map (about [0, 1], air 0) of a normal chest and the soft lung-field mask."""
    trunk = _inside(superellipse_level(x, y, 0.0, 0.25, rng.uniform(0.86, 0.94), 1.25, power=4), 4, 0.03)
    neck = _soft(np.abs(x) - 0.24, 0.03) * _soft(y + 0.6, 0.05)
    body = np.maximum(trunk, neck)
    thickness = np.sqrt(np.clip(1.0 - np.square(x / 0.95), 0.0, 1.0))
    lungs, heart = _lungs(rng, x, y)
    trachea = _soft(np.abs(x) - 0.03, 0.015) * _soft(y + 0.35, 0.05)
    mediastinum = _soft(np.abs(x - 0.02) - 0.12, 0.05) * _soft(y - 0.1, 0.1)
    hila = np.exp(-(np.square(np.abs(x) - 0.17) / 0.006 + np.square(y + 0.02) / 0.02))
    vessels = _smooth_noise(rng, x.shape, 0.015 * unit)
    att = body * (0.22 + 0.2 * thickness)
    att += 0.05 * heart + 0.04 * mediastinum - 0.06 * trachea
    att -= lungs * (0.26 - 0.02 * vessels - 0.06 * hila)
    att += _bones(x, y, trunk)
    return np.clip(att, 0.0, 1.0), lungs


def _opacities(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, lungs: np.ndarray, unit: float) -> np.ndarray:
    """Patchy consolidation: 3 to 7 irregular soft blobs inside the lung fields (about 0 to 0.3)."""
    inside = np.flatnonzero(lungs.ravel() > 0.5)
    patch = np.zeros_like(x)
    for index in rng.choice(inside, size=int(rng.integers(3, 8))):
        radius = rng.uniform(0.06, 0.16)
        d2 = np.square(x.ravel()[index] - x) + np.square(y.ravel()[index] - y)
        patch = np.maximum(patch, rng.uniform(0.16, 0.3) * np.exp(-d2 / radius**2))
    texture = 1.0 + 0.6 * _smooth_noise(rng, x.shape, 0.04 * unit)
    return np.clip(patch * texture, 0.0, 0.32) * lungs


def _acquire(rng: np.random.Generator, att: np.ndarray, site: SiteProfile) -> np.ndarray:
    """The site's detector response: exposure and contrast (with +-4 % per-image jitter), gamma,
    blur and signal-dependent noise. Returns float32 in [0, 1]."""
    exposure = site.exposure + rng.uniform(-0.04, 0.04)
    contrast = site.contrast * rng.uniform(0.96, 1.04)
    display = np.clip(exposure + contrast * att, 0.0, 1.0) ** site.gamma
    if site.blur_sigma > 0:
        display = ndimage.gaussian_filter(display, site.blur_sigma)
    display += site.noise * np.sqrt(0.25 + display) * rng.standard_normal(display.shape, dtype=np.float32)
    return np.clip(display, 0.0, 1.0).astype(np.float32)


def render_chest(rng: np.random.Generator, *, label: str, shape: tuple[int, int], site: SiteProfile) -> np.ndarray:
    """A synthetic PA chest radiograph as a display image: float32 (rows, columns) in [0, 1].

    Air is dark and bone bright; the heart shadow lies towards the image right (patient's left, as a
    PA view is conventionally displayed). ``label="opacity"`` adds patchy brighter blobs confined to
    the lung fields; ``"normal"`` has none. Anatomy, positioning and the blobs are drawn from
    ``rng``; the look (exposure, gamma, blur, noise) comes from ``site``.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    x, y, unit = _grid(rng, shape)
    att, lungs = _anatomy(rng, x, y, unit)
    if label == "opacity":
        att = np.clip(att + _opacities(rng, x, y, lungs, unit), 0.0, 1.0)
    return _acquire(rng, att, site)
