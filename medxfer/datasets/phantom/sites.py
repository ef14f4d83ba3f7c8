"""The phantom's labels and its three fictional sites: how each acquires and encodes a radiograph."""

from __future__ import annotations

from dataclasses import dataclass

LABELS = ("normal", "opacity")


@dataclass(frozen=True)
class SiteProfile:
    """How one (fictional) hospital acquires and encodes chest radiographs.

    Acquisition, applied to the rendered attenuation map ``a`` (about [0, 1]):
    ``display = clip(exposure + contrast * a, 0, 1) ** gamma``, then a Gaussian detector blur of
    ``blur_sigma`` pixels, then signal-dependent noise of standard deviation about ``noise``
    (display units), clipped to [0, 1].

    Encoding: unsigned stored bits drawn per image from ``bits_stored`` (one value, or several as
    when a site runs readers of two generations), modality LUT ``rescale_slope`` and
    ``rescale_intercept``, ``window`` (center, width) in rescaled units or ``None`` for the full stored range, pixel
    spacing written to ``spacing_tag`` and drawn uniformly from ``pixel_spacing_mm`` (low, high),
    image shape (rows, columns) drawn from ``image_sizes``.
    """

    name: str
    institution: str
    manufacturer: str
    modality: str
    photometric: str
    bits_stored: tuple[int, ...]
    rescale_slope: float
    rescale_intercept: float
    window: tuple[float, float] | None
    spacing_tag: str
    pixel_spacing_mm: tuple[float, float]
    image_sizes: tuple[tuple[int, int], ...]
    exposure: float
    contrast: float
    gamma: float
    noise: float
    blur_sigma: float


SITES: tuple[SiteProfile, ...] = (
    SiteProfile(
        name="site-a",
        institution="Northbrook General Hospital",
        manufacturer="Halcyon Imaging Systems",
        modality="CR",
        photometric="MONOCHROME1",
        bits_stored=(10, 12),  # older and newer CR readers
        rescale_slope=1.0,
        rescale_intercept=0.0,
        window=None,
        spacing_tag="ImagerPixelSpacing",
        pixel_spacing_mm=(0.14, 0.20),
        image_sizes=((256, 256), (320, 256), (288, 240), (240, 240)),
        exposure=0.10,
        contrast=0.95,
        gamma=0.8,
        noise=0.035,
        blur_sigma=0.6,
    ),
    SiteProfile(
        name="site-b",
        institution="Riverside Community Clinic",
        manufacturer="Vantor Medical",
        modality="DX",
        photometric="MONOCHROME2",
        bits_stored=(14,),
        rescale_slope=0.5,
        rescale_intercept=-1024.0,
        window=(3000.0, 6000.0),
        spacing_tag="PixelSpacing",
        pixel_spacing_mm=(0.16, 0.25),
        image_sizes=((224, 224), (256, 208), (192, 192), (320, 320), (208, 256)),
        exposure=0.0,
        contrast=1.05,
        gamma=1.25,
        noise=0.012,
        blur_sigma=1.1,
    ),
    SiteProfile(
        name="site-c",
        institution="Eastmere University Hospital",
        manufacturer="Orrin Radiologic",
        modality="DX",
        photometric="MONOCHROME1",  # encode_dicom adds Presentation LUT Shape INVERSE, as DX requires
        bits_stored=(16,),
        rescale_slope=1.0,
        rescale_intercept=-32768.0,
        window=(0.0, 52000.0),
        spacing_tag="ImagerPixelSpacing",
        pixel_spacing_mm=(0.11, 0.15),
        image_sizes=((256, 256), (288, 240), (240, 288), (272, 272)),
        exposure=0.05,
        contrast=0.9,
        gamma=1.05,
        noise=0.022,
        blur_sigma=0.35,
    ),
)
