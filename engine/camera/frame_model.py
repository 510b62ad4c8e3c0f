"""The frame-camera (collinearity) model: interior and exterior orientation, vectorised.

Conventions
-----------
* Image pixels: (col, row) with (0, 0) the top-left corner of the top-left pixel, so a
  pixel centre is at +0.5, as GDAL counts them. The *displayed* image is the stored one
  after its EXIF orientation; the camera model works on the displayed image.
* Film (focal-plane) coordinates in millimetres, origin at the principal point, x to the
  right of the displayed image and y to its top.
* Camera frame: x right, y up (image top), z backwards, so the camera looks along -z.
* ``rotation`` maps camera vectors to world vectors (a projected CRS, Z up, metres).
  From photogrammetric angles it is Rx(omega) · Ry(phi) · Rz(kappa); from a heading and
  a gimbal pitch see :func:`rotation_from_ypr`.

Ground → image (:meth:`FrameModel.image_from_ground`) is closed-form, so the ortho kernel
evaluates it per output pixel without iteration; image → ground (:meth:`FrameModel.rays`)
gives rays that :mod:`engine.camera.placement` intersects with the terrain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.dem import Terrain


@dataclass(frozen=True)
class Interior:
    """Interior orientation of a frame camera.

    Parameters
    ----------
    focal_mm
        Focal length (principal distance), millimetres.
    pixel_mm
        (x, y) size of a sensor pixel, millimetres (for scans: the scanning resolution).
    sensor_shape
        (rows, columns) of the sensor, i.e. of the full-resolution image. A frame stored at
        another size (a downscaled copy) is mapped onto it by scaling.
    principal_mm
        (x0, y0) offset of the principal point from the sensor centre, millimetres.
    film_to_pixel
        For scanned film: the affine (a, b, c, d, e, f) of ``col = a·x + b·y + c`` and
        ``row = d·x + e·y + f`` from film coordinates (fiducial frame, mm) to scan pixels,
        fitted from fiducial marks; it replaces ``pixel_mm`` and ``principal_mm`` for the
        film → pixel step (the film coordinates then refer to the fiducial centre, and the
        principal point sits at ``principal_mm`` in that frame).
    """

    focal_mm: float
    pixel_mm: tuple[float, float]
    sensor_shape: tuple[int, int]
    principal_mm: tuple[float, float] = (0.0, 0.0)
    film_to_pixel: tuple[float, float, float, float, float, float] | None = None


@dataclass(frozen=True)
class FrameModel:
    """One frame: camera, pose, its terrain and the stored image's shape and orientation.

    Picklable and immutable: it travels with the chunk tasks as ``SourcePart.model``.
    """

    interior: Interior
    centre: tuple[float, float, float]  # X, Y, Z of the perspective centre, in ``crs_wkt``
    rotation: tuple[float, ...]  # 3x3 row-major, camera → world
    crs_wkt: str
    image_shape: tuple[int, int]  # (rows, cols) of the stored image
    terrain: Terrain
    orientation: int = 1  # EXIF orientation of the stored image

    # -- image geometry ---------------------------------------------------------------
    @property
    def displayed_shape(self) -> tuple[int, int]:
        h, w = self.image_shape
        return (w, h) if self.orientation in (5, 6, 7, 8) else (h, w)

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.rotation, dtype="float64").reshape(3, 3)

    def stored_from_displayed(
        self, col: np.ndarray, row: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stored-image (col, row) of displayed-image positions (EXIF orientation 1-8)."""
        h, w = self.image_shape
        o = self.orientation
        if o == 2:
            return w - col, row
        if o == 3:
            return w - col, h - row
        if o == 4:
            return col, h - row
        if o == 5:
            return row, col
        if o == 6:
            return row, h - col
        if o == 7:
            return w - row, h - col
        if o == 8:
            return w - row, col
        return col, row

    def displayed_from_stored(
        self, col: np.ndarray, row: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`stored_from_displayed`."""
        h, w = self.image_shape
        o = self.orientation
        if o == 5:
            return row, col
        if o == 6:
            return h - row, col
        if o == 7:
            return h - row, w - col
        if o == 8:
            return row, w - col
        return self.stored_from_displayed(col, row)  # 1-4 are their own inverses

    # -- film ↔ pixel -----------------------------------------------------------------
    def _sensor_scale(self) -> tuple[float, float]:
        rows, cols = self.interior.sensor_shape
        h, w = self.displayed_shape
        return cols / w, rows / h

    def pixel_from_film(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Displayed-image (col, row) of film coordinates (mm, principal-point origin)."""
        io = self.interior
        x0, y0 = io.principal_mm
        sx, sy = self._sensor_scale()
        if io.film_to_pixel is not None:
            a, b, c, d, e, f = io.film_to_pixel
            fx, fy = x + x0, y + y0
            return (a * fx + b * fy + c) / sx, (d * fx + e * fy + f) / sy
        rows, cols = io.sensor_shape
        px, py = io.pixel_mm
        return ((x + x0) / px + cols / 2.0) / sx, (rows / 2.0 - (y + y0) / py) / sy

    def film_from_pixel(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Film coordinates (mm) of displayed-image (col, row); inverse of pixel_from_film."""
        io = self.interior
        x0, y0 = io.principal_mm
        sx, sy = self._sensor_scale()
        cs, rs = np.asarray(col) * sx, np.asarray(row) * sy
        if io.film_to_pixel is not None:
            a, b, c, d, e, f = io.film_to_pixel
            det = a * e - b * d
            u, v = cs - c, rs - f
            return (e * u - b * v) / det - x0, (a * v - d * u) / det - y0
        rows, cols = io.sensor_shape
        px, py = io.pixel_mm
        return (cs - cols / 2.0) * px - x0, (rows / 2.0 - rs) * py - y0

    # -- ground ↔ image ---------------------------------------------------------------
    def image_from_ground(
        self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stored-image (col, row) of ground points, and whether each is in front of the
        camera (points behind it get NaN positions)."""
        cx, cy, cz = self.centre
        m = self.matrix
        dx, dy, dz = np.asarray(x) - cx, np.asarray(y) - cy, np.asarray(z) - cz
        # camera-frame vector: R^T (P - C)
        u = m[0, 0] * dx + m[1, 0] * dy + m[2, 0] * dz
        v = m[0, 1] * dx + m[1, 1] * dy + m[2, 1] * dz
        w = m[0, 2] * dx + m[1, 2] * dy + m[2, 2] * dz
        front = w < 0
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(front, -self.interior.focal_mm / w, np.nan)
        col, row = self.pixel_from_film(u * scale, v * scale)
        scol, srow = self.stored_from_displayed(col, row)
        return scol, srow, front

    def rays(self, col: np.ndarray, row: np.ndarray) -> np.ndarray:
        """World directions (n, 3) of the rays through stored-image positions (col, row)."""
        dcol, drow = self.displayed_from_stored(np.asarray(col, float), np.asarray(row, float))
        fx, fy = self.film_from_pixel(dcol, drow)
        cam = np.stack([fx, fy, np.full_like(fx, -self.interior.focal_mm)], axis=-1)
        return np.asarray(cam @ self.matrix.T)

    def ground_at_height(
        self, col: np.ndarray, row: np.ndarray, z: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where the rays of stored-image (col, row) meet the plane(s) Z = ``z``; NaN for
        rays that never reach it (looking above the horizon)."""
        d = self.rays(col, row)
        cx, cy, cz = self.centre
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (np.asarray(z, float) - cz) / d[..., 2]
        t = np.where(t > 0, t, np.nan)
        return cx + t * d[..., 0], cy + t * d[..., 1]


def rotation_from_opk(omega: float, phi: float, kappa: float) -> np.ndarray:
    """Camera → world rotation from photogrammetric omega, phi, kappa (degrees).

    ``R = Rx(omega) · Ry(phi) · Rz(kappa)``: the classic sequential convention of aerial
    triangulation (PATB, BINGO, Pix4D), camera x right, y up, looking down -z.
    """
    o, p, k = (math.radians(a) for a in (omega, phi, kappa))
    rx = np.array([[1, 0, 0], [0, math.cos(o), -math.sin(o)], [0, math.sin(o), math.cos(o)]])
    ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    rz = np.array([[math.cos(k), -math.sin(k), 0], [math.sin(k), math.cos(k), 0], [0, 0, 1]])
    return rx @ ry @ rz


def rotation_from_ypr(heading: float, pitch: float = -90.0, roll: float = 0.0) -> np.ndarray:
    """Camera → world rotation of a camera whose image top points to ``heading``.

    Parameters
    ----------
    heading
        Grid azimuth of the image top (degrees clockwise from grid north); for a tilted
        camera, the direction it looks towards.
    pitch
        Gimbal pitch as drones record it: -90 looks straight down (nadir), 0 at the horizon.
    roll
        Rotation about the viewing axis, positive to the right (degrees).
    """
    t = math.radians(90.0 + pitch)  # tilt from nadir, towards the image top
    r = math.radians(-roll)
    h = math.radians(-heading)
    rx = np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
    ry = np.array([[math.cos(r), 0, math.sin(r)], [0, 1, 0], [-math.sin(r), 0, math.cos(r)]])
    rz = np.array([[math.cos(h), -math.sin(h), 0], [math.sin(h), math.cos(h), 0], [0, 0, 1]])
    return rz @ rx @ ry


def fit_film_to_pixel(
    film: np.ndarray, pixel: np.ndarray
) -> tuple[tuple[float, float, float, float, float, float], np.ndarray]:
    """Least-squares affine from film coordinates (n, 2) mm to pixel (col, row) (n, 2).

    Returns the affine (a, b, c, d, e, f) and the residual of each mark in pixels.
    At least three marks not on a line are needed.
    """
    film = np.asarray(film, dtype="float64")
    pixel = np.asarray(pixel, dtype="float64")
    design = np.column_stack([film, np.ones(len(film))])
    (a, b, c), *_ = np.linalg.lstsq(design, pixel[:, 0], rcond=None)
    (d, e, f), *_ = np.linalg.lstsq(design, pixel[:, 1], rcond=None)
    fitted = np.column_stack([design @ [a, b, c], design @ [d, e, f]])
    residuals = np.hypot(*(fitted - pixel).T)
    return (float(a), float(b), float(c), float(d), float(e), float(f)), residuals
