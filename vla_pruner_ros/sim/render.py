"""A small, deterministic OpenCV rasteriser for the simulated workcell.

What is drawn, back to front: a background (wall/floor gradient), the textured table (one
perspective warp of a texture image), soft-edged shadows of the arm and cubes cast on the table,
then the cubes (shaded box faces), the arm links (shaded capsules) and the gripper (boxes),
sorted by depth (painter's algorithm). Geometry behind the camera's near plane is clipped.
Colours are RGB, images are (H, W, 3) uint8.
"""
from __future__ import annotations

import numpy as np
import cv2

from .scene import Camera, Scene

_SUBPIXEL_BITS = 4  # cv2 fixed-point drawing: smooth motion at sub-pixel steps
_SUBPIXEL = float(1 << _SUBPIXEL_BITS)
_MAX_COORD = float(1 << 20)  # keep fixed-point coordinates far from int32 overflow
_AMBIENT, _DIFFUSE = 0.45, 0.6
_SHADOW_DARKEN = 0.45  # fraction of table brightness removed under a shadow
_TEXTURE_METRES_PER_PIXEL = 0.0025

ARM_WHITE = (232, 232, 228)
JOINT_GREY = (200, 202, 205)
GRIPPER_DARK = (70, 72, 78)
FINGER_SILVER = (165, 168, 175)

# Unit-cube corners (sign pattern) and each face's corners in order around it.
_CORNER_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
_BOX_FACES = (  # (axis, sign, corner indices)
    (0, -1, (0, 1, 3, 2)), (0, 1, (4, 6, 7, 5)),
    (1, -1, (0, 4, 5, 1)), (1, 1, (2, 3, 7, 6)),
    (2, -1, (0, 2, 6, 4)), (2, 1, (1, 5, 7, 3)),
)
_ARC = np.linspace(-np.pi / 2, np.pi / 2, 9)  # half-circle samples for capsule ends


def _table_texture(extent, metres_per_pixel) -> np.ndarray:
    """Light wood with soft grain and a faint 10 cm grid, so motion over the table is visible."""
    x_min, x_max, y_min, y_max = extent
    cols = int(round((x_max - x_min) / metres_per_pixel))
    rows = int(round((y_max - y_min) / metres_per_pixel))
    rng = np.random.default_rng(12345)  # fixed: the texture is part of the scene's look
    grain = cv2.resize(rng.normal(0.0, 1.0, (rows // 24 + 1, 8)).astype(np.float32), (cols, rows),
                       interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.normal(0.0, 1.0, (rows, cols)).astype(np.float32), (0, 0), 1.2)
    shade = 1.0 + 0.05 * grain + 0.03 * fine
    base = np.array([196, 160, 118], dtype=np.float32)
    texture = base[None, None, :] * shade[..., None]
    # Texture column c <-> x, row r <-> y (row 0 at y_min).
    xs = x_min + (np.arange(cols) + 0.5) * metres_per_pixel
    ys = y_min + (np.arange(rows) + 0.5) * metres_per_pixel
    on_x = np.abs(xs / 0.1 - np.round(xs / 0.1)) * 0.1 < 0.0025
    on_y = np.abs(ys / 0.1 - np.round(ys / 0.1)) * 0.1 < 0.0025
    texture[:, on_x] *= 0.82
    texture[on_y, :] *= 0.82
    return np.clip(texture, 0, 255).astype(np.uint8)


def arm_geometry(link_frames: np.ndarray, gripper: float):
    """World-space capsules and boxes of the xArm6 + xArm gripper for one state.

    Returns (capsules, boxes): capsules as (start, end, radius, rgb) and boxes as
    (centre, rotation 3x3, half_sizes, rgb). Dimensions are approximations of the real links.
    """
    f = link_frames

    def at(frame: int, local) -> np.ndarray:
        return f[frame, :3, :3] @ np.asarray(local, dtype=np.float64) + f[frame, :3, 3]

    def along_z(frame: int, half_length: float):  # a joint housing around this link's joint axis
        return at(frame, (0, 0, -half_length)), at(frame, (0, 0, half_length))

    capsules = [
        (at(0, (0, 0, 0.06)), at(0, (0, 0, 0.20)), 0.062, ARM_WHITE),          # base column
        (at(1, (0, 0, -0.07)), at(1, (0, 0, 0.0)), 0.055, ARM_WHITE),          # link1
        (*along_z(2, 0.06), 0.055, JOINT_GREY),                                # joint2 housing
        (at(2, (0, 0, 0)), at(3, (0, 0, 0)), 0.045, ARM_WHITE),                # upper arm
        (*along_z(3, 0.055), 0.05, JOINT_GREY),                                # joint3 housing
        (at(3, (0, 0, 0)), at(3, (0.0775, 0.02, 0)), 0.045, ARM_WHITE),        # elbow
        (at(3, (0.0775, 0.02, 0)), at(4, (0, 0, 0)), 0.04, ARM_WHITE),         # forearm
        (*along_z(5, 0.045), 0.042, JOINT_GREY),                               # joint5 housing
        (at(5, (0, 0, 0)), at(5, (0.076, 0, 0)), 0.038, ARM_WHITE),            # wrist
        (at(5, (0.076, 0, 0)), at(6, (0, 0, 0.0)), 0.036, ARM_WHITE),          # link5 -> flange
        (at(6, (0, 0, -0.01)), at(6, (0, 0, 0.05)), 0.036, JOINT_GREY),        # flange / joint6
    ]
    rotation = f[6, :3, :3]
    opening = 0.0425 * (1.0 - float(np.clip(gripper, 0.0, 1.0)))  # xArm gripper: 0..85 mm stroke
    boxes = [
        (at(6, (0, 0, 0.082)), rotation, np.array([0.022, 0.048, 0.03]), GRIPPER_DARK),  # gripper body
        (at(6, (0, opening + 0.007, 0.14)), rotation, np.array([0.009, 0.007, 0.032]), FINGER_SILVER),
        (at(6, (0, -opening - 0.007, 0.14)), rotation, np.array([0.009, 0.007, 0.032]), FINGER_SILVER),
    ]
    return capsules, boxes


def cube_boxes(scene: Scene):
    """The scene's cubes as (centre, rotation, half_sizes, rgb) boxes."""
    boxes = []
    for cube in scene.cubes:
        c, s = np.cos(cube.yaw), np.sin(cube.yaw)
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        boxes.append((cube.position, rotation, np.full(3, cube.size / 2), cube.rgb))
    return boxes


class _Geometry:
    """World-space primitives of one state, as arrays, shared by every view of that state."""

    def __init__(self, capsules, boxes, light, table_height):
        start, end, radius, rgb = (np.array(x, dtype=np.float64) for x in zip(*capsules))
        axis = end - start
        axis /= np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-9)
        self.cap_start, self.cap_end, self.cap_radius, self.cap_rgb, self.cap_axis = start, end, radius, rgb, axis
        # A lighter stripe on the lit side makes a flat capsule read as a cylinder.
        lit = light - (axis @ light)[:, None] * axis
        lit /= np.maximum(np.linalg.norm(lit, axis=-1, keepdims=True), 1e-9)
        offset = lit * (0.4 * radius)[:, None]
        self.hl_start, self.hl_end = start + offset, end + offset
        self.hl_radius = 0.45 * radius
        self.hl_rgb = np.minimum(255.0, rgb * 1.08 + 12.0)

        centres, rotations, halves, box_rgb = (np.array(x, dtype=np.float64) for x in zip(*boxes))
        local_corners = _CORNER_SIGNS[None] * halves[:, None, :]                         # (B, 8, 3)
        corners = centres[:, None, :] + np.einsum("bck,bjk->bcj", local_corners, rotations)
        face_index = np.array([idx for _, _, idx in _BOX_FACES])                         # (6, 4)
        self.face_corners = corners[:, face_index].reshape(-1, 4, 3)                      # (B*6, 4, 3)
        axes = np.array([a for a, _, _ in _BOX_FACES])
        signs = np.array([sg for _, sg, _ in _BOX_FACES], dtype=np.float64)
        self.face_normal = (rotations[:, :, axes] * signs).transpose(0, 2, 1).reshape(-1, 3)  # (B*6, 3)
        lambert = np.maximum(0.0, self.face_normal @ light)
        factor = np.minimum(1.15, _AMBIENT + _DIFFUSE * lambert)
        self.face_rgb = np.minimum(255.0, np.repeat(box_rgb, 6, axis=0) * factor[:, None])

        # Shadows cast along the light onto the table: capsule footprints and box hulls, each
        # as a 2 * len(_ARC)-point convex outline (hulls padded by repeating their last point).
        self.casts_shadows = light[2] > 1e-3
        if not self.casts_shadows:  # light at or below the horizon: no shadows on the table
            self.shadow_outlines = np.zeros((0, 2 * len(_ARC), 3))
            return
        height = table_height + 1e-4

        def onto_table(points):
            return points - ((points[..., 2:3] - height) / light[2]) * light

        a, b = onto_table(start)[:, :2], onto_table(end)[:, :2]
        outlines = [_capsule_outline(a, b, radius, radius)]
        hulls = []
        for box_corners in onto_table(corners)[..., :2]:
            hull = cv2.convexHull(box_corners.astype(np.float32))[:, 0].astype(np.float64)
            hulls.append(np.concatenate([hull, np.repeat(hull[-1:], outlines[0].shape[1] - len(hull), 0)]))
        outlines.append(np.stack(hulls))
        flat = np.concatenate(outlines)
        self.shadow_outlines = np.concatenate([flat, np.full(flat.shape[:2] + (1,), height)], -1)


def _capsule_outline(a, b, radius_a, radius_b) -> np.ndarray:
    """(N, 2 * len(_ARC), 2) outline of 2-D capsules from a to b (half circles + straight sides)."""
    direction = b - a
    length = np.linalg.norm(direction, axis=-1, keepdims=True)
    direction = np.where(length > 1e-9, direction / np.maximum(length, 1e-12), np.array([1.0, 0.0]))
    normal = np.stack([-direction[:, 1], direction[:, 0]], -1)
    cos, sin = np.cos(_ARC)[None, :, None], np.sin(_ARC)[None, :, None]
    cap_b = b[:, None] + radius_b[:, None, None] * (cos * direction[:, None] + sin * normal[:, None])
    cap_a = a[:, None] - radius_a[:, None, None] * (cos * direction[:, None] + sin * normal[:, None])
    return np.concatenate([cap_b, cap_a], axis=1)


class Renderer:
    """Renders (H, W, 3) uint8 RGB views of a Scene and an arm state; deterministic."""

    def __init__(self, width: int = 224, height: int = 224):
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (16 <= value <= 4096):
                raise ValueError(f"{name} must be an integer in 16..4096 pixels, got {value!r}")
        self.width, self.height = int(width), int(height)
        rows = np.linspace(0.0, 1.0, self.height, dtype=np.float32)[:, None]
        top, bottom = np.array([188, 194, 204], np.float32), np.array([112, 116, 124], np.float32)
        gradient = top + (bottom - top) * rows  # (H, 3)
        self._background = np.ascontiguousarray(
            np.broadcast_to(gradient[:, None, :], (self.height, self.width, 3)).astype(np.uint8))
        self._pixel_u = np.broadcast_to(np.arange(self.width, dtype=np.float32), (self.height, self.width))
        self._pixel_v = np.broadcast_to(np.arange(self.height, dtype=np.float32)[:, None], (self.height, self.width))
        self._textures: dict[tuple, np.ndarray] = {}
        self._static_views: dict[tuple, np.ndarray] = {}  # background + table for unmoving cameras

    # ---- camera model -------------------------------------------------------------------
    def intrinsics(self, vertical_fov_deg: float) -> np.ndarray:
        if not (1.0 <= vertical_fov_deg <= 170.0):
            raise ValueError(f"vertical_fov_deg must be within 1..170, got {vertical_fov_deg}")
        focal = (self.height / 2.0) / np.tan(np.deg2rad(vertical_fov_deg) / 2.0)
        return np.array([[focal, 0.0, (self.width - 1) / 2.0],
                         [0.0, focal, (self.height - 1) / 2.0],
                         [0.0, 0.0, 1.0]])

    def project(self, points_world, camera_pose, vertical_fov_deg) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N, 2) and depths (N,) of world points (depth <= 0: behind)."""
        pts = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
        cam = (pts - camera_pose[:3, 3]) @ camera_pose[:3, :3]
        k = self.intrinsics(vertical_fov_deg)
        depth = cam[:, 2]
        safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
        uv = cam[:, :2] / safe[:, None] * k[0, 0] + k[:2, 2]
        return uv, depth

    # ---- public API ---------------------------------------------------------------------
    def render_views(self, scene: Scene, link_frames: np.ndarray, gripper: float) -> dict[str, np.ndarray]:
        """Every camera of the scene, e.g. {"fixed": image, "wrist": image}."""
        geometry = self._geometry(scene, link_frames, gripper)
        return {name: self._render(scene, cam, cam.pose(link_frames), geometry)
                for name, cam in scene.cameras.items()}

    def render(self, scene: Scene, link_frames: np.ndarray, gripper: float,
               camera: str | Camera = "fixed", camera_pose: np.ndarray | None = None) -> np.ndarray:
        """One view; ``camera`` is a name in ``scene.cameras`` or a Camera; ``camera_pose`` overrides."""
        if isinstance(camera, str):
            if camera not in scene.cameras:
                raise ValueError(f"unknown camera {camera!r}; scene cameras are {sorted(scene.cameras)}")
            camera = scene.cameras[camera]
        geometry = self._geometry(scene, link_frames, gripper)
        if camera_pose is None:
            pose = camera.pose(np.asarray(link_frames))
        else:
            pose = np.asarray(camera_pose, dtype=np.float64)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError(f"camera_pose must be a finite 4x4 matrix, got shape {pose.shape}")
        return self._render(scene, camera, pose, geometry)

    # ---- internals ----------------------------------------------------------------------
    def _geometry(self, scene, link_frames, gripper) -> _Geometry:
        frames = np.asarray(link_frames, dtype=np.float64)
        if frames.shape != (8, 4, 4) or not np.all(np.isfinite(frames)):
            raise ValueError("link_frames must be a finite (8, 4, 4) array from forward_kinematics, "
                             f"got shape {frames.shape}")
        if not np.isfinite(gripper):
            raise ValueError(f"gripper must be finite, got {gripper}")
        capsules, arm_boxes = arm_geometry(frames, gripper)
        return _Geometry(capsules, cube_boxes(scene) + arm_boxes, scene.light_direction, scene.table_height)

    def _table_view(self, scene, camera: Camera, k, rotation, position) -> np.ndarray:
        """Background + textured table for this camera pose (cached for cameras that do not move)."""
        key = (tuple(scene.table_extent), scene.table_height, camera.vertical_fov_deg,
               rotation.tobytes(), position.tobytes())
        cached = self._static_views.get(key)
        if cached is not None:
            return cached.copy()
        image = self._background.copy()
        self._draw_table(image, scene, k, rotation, position)
        if camera.parent == "world":
            if len(self._static_views) >= 16:
                self._static_views.clear()
            self._static_views[key] = image.copy()
        return image

    def _render(self, scene, camera: Camera, pose, geo: _Geometry) -> np.ndarray:
        k = self.intrinsics(camera.vertical_fov_deg)
        rotation, position = pose[:3, :3], pose[:3, 3]
        image = self._table_view(scene, camera, k, rotation, position)
        view = _View(k, rotation, position, camera.near)
        if geo.casts_shadows:
            self._draw_shadows(image, view, geo)

        items = []  # (-depth, order, pixel outline int32, colour)
        # Box faces that face the camera.
        visible = np.einsum("fj,fj->f", geo.face_normal, position - geo.face_corners.mean(1)) > 0
        corners = view.to_camera(geo.face_corners[visible])            # (F, 4, 3)
        colours = geo.face_rgb[visible]
        depth = corners[..., 2].mean(-1)
        in_front = np.all(corners[..., 2] >= view.near, axis=-1)
        pixels = view.pixels(np.where(in_front[:, None, None], corners, 1.0))
        for i in range(len(corners)):
            if in_front[i]:
                items.append((-depth[i], len(items), pixels[i], tuple(colours[i])))
            else:
                outline = view.clipped_pixels(corners[i])
                if outline is not None:
                    items.append((-depth[i], len(items), outline, tuple(colours[i])))
        # Capsules, shaded with the surface normal that faces the camera, then their highlight.
        middle = (geo.cap_start + geo.cap_end) / 2
        to_camera = position - middle
        normal = to_camera - np.einsum("cj,cj->c", to_camera, geo.cap_axis)[:, None] * geo.cap_axis
        normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-9)
        factor = np.minimum(1.15, _AMBIENT + _DIFFUSE * np.maximum(0.0, normal @ scene.light_direction))
        body_rgb = np.minimum(255.0, geo.cap_rgb * factor[:, None])
        body = view.capsule_pixels(geo.cap_start, geo.cap_end, geo.cap_radius)
        stripe = view.capsule_pixels(geo.hl_start, geo.hl_end, geo.hl_radius)
        cap_depth = view.to_camera(middle)[:, 2]
        for i, outline in enumerate(body):
            if outline is None:
                continue
            items.append((-cap_depth[i], len(items), outline, tuple(body_rgb[i])))
            if stripe[i] is not None:
                items.append((-cap_depth[i], len(items), stripe[i], tuple(geo.hl_rgb[i])))
        items.sort(key=lambda item: (item[0], item[1]))  # far to near, stable
        for _, _, outline, colour in items:
            cv2.fillConvexPoly(image, outline, colour, cv2.LINE_AA, _SUBPIXEL_BITS)
        return image

    def _texture(self, scene: Scene) -> np.ndarray:
        key = tuple(scene.table_extent)
        if key not in self._textures:
            self._textures[key] = _table_texture(scene.table_extent, _TEXTURE_METRES_PER_PIXEL)
        return self._textures[key]

    def _draw_table(self, image, scene, k, rotation, position) -> None:
        x_min, _, y_min, _ = scene.table_extent
        z = scene.table_height
        height_above = position[2] - z
        if abs(height_above) < 1e-6:
            return  # camera in the table plane: the table is an edge-on line
        # Homography texture pixel (c, r) -> image pixel, through the plane z = table_height.
        res = _TEXTURE_METRES_PER_PIXEL
        texture_to_world = np.array([[res, 0.0, x_min + 0.5 * res], [0.0, res, y_min + 0.5 * res], [0.0, 0.0, 1.0]])
        plane_origin_in_cam = rotation.T @ (np.array([0.0, 0.0, z]) - position)
        world_to_cam = np.column_stack([rotation.T[:, 0], rotation.T[:, 1], plane_origin_in_cam])
        homography = k @ world_to_cam @ texture_to_world
        # Only pixels whose viewing ray meets the plane in front of the camera see the table.
        ray_z = (rotation @ np.linalg.inv(k))[2]  # world z of the ray through pixel (u, v, 1)
        sign = -np.sign(height_above)
        corners = np.array([[0, 0, 1], [self.width - 1, 0, 1], [0, self.height - 1, 1],
                            [self.width - 1, self.height - 1, 1]], dtype=np.float64) @ ray_z
        if np.all(corners * sign <= 0):
            return  # looking away from the table plane
        texture = self._texture(scene)
        if np.all(corners * sign > 0):
            cv2.warpPerspective(texture, homography, (self.width, self.height), dst=image,
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
            return
        warped = image.copy()
        cv2.warpPerspective(texture, homography, (self.width, self.height), dst=warped,
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
        hits = (ray_z[0] * self._pixel_u + ray_z[1] * self._pixel_v + ray_z[2]) * sign > 0
        np.copyto(image, warped, where=hits[..., None])

    def _draw_shadows(self, image, view, geo: _Geometry) -> None:
        mask = np.zeros(image.shape[:2], np.uint8)
        outlines = view.to_camera(geo.shadow_outlines)
        in_front = np.all(outlines[..., 2] >= view.near, axis=-1)
        pixels = view.pixels(np.where(in_front[:, None, None], outlines, 1.0))
        for i in range(len(outlines)):
            outline = pixels[i] if in_front[i] else view.clipped_pixels(outlines[i])
            if outline is not None:
                cv2.fillConvexPoly(mask, outline, 255, cv2.LINE_AA, _SUBPIXEL_BITS)
        # Soft shadow: darken the table in proportion to the slightly blurred coverage mask.
        mask = cv2.blur(mask, (3, 3))
        keep = cv2.convertScaleAbs(mask, alpha=-_SHADOW_DARKEN, beta=255.0)
        cv2.multiply(image, cv2.cvtColor(keep, cv2.COLOR_GRAY2RGB), dst=image, scale=1.0 / 255.0)


class _View:
    """Per-render camera state: world -> camera transform, near clipping, fixed-point outlines."""

    def __init__(self, k, rotation, position, near):
        self.k, self.rotation, self.position, self.near = k, rotation, position, near
        self.focal = k[0, 0]
        self.centre = k[:2, 2]

    def to_camera(self, points) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) - self.position) @ self.rotation

    def _fixed_point(self, uv) -> np.ndarray:
        return np.clip(np.round(uv * _SUBPIXEL), -_MAX_COORD, _MAX_COORD).astype(np.int32)

    def pixels(self, cam) -> np.ndarray:
        """Fixed-point pixel coordinates of camera-space points in front of the camera."""
        return self._fixed_point(cam[..., :2] / cam[..., 2:3] * self.focal + self.centre)

    def clipped_pixels(self, polygon) -> np.ndarray | None:
        """Sutherland-Hodgman clip of a convex camera-space polygon to z >= near, projected."""
        inside = polygon[:, 2] >= self.near
        out = []
        for i in range(len(polygon)):
            prev, cur = polygon[i - 1], polygon[i]
            if inside[i] != inside[i - 1]:
                t = (self.near - prev[2]) / (cur[2] - prev[2])
                out.append(prev + t * (cur - prev))
            if inside[i]:
                out.append(cur)
        return self.pixels(np.array(out)) if len(out) >= 3 else None

    def capsule_pixels(self, start, end, radius) -> list:
        """Fixed-point outlines of 3-D capsules seen as 2-D capsules; None where fully hidden."""
        a, b = self.to_camera(start), self.to_camera(end)
        a_behind, b_behind = a[:, 2] < self.near, b[:, 2] < self.near
        # Slide an end that is behind the near plane onto it, along the capsule's axis.
        t = (self.near - a[:, 2]) / np.where(np.abs(b[:, 2] - a[:, 2]) < 1e-12, 1e-12, b[:, 2] - a[:, 2])
        on_plane = a + np.clip(t, 0.0, 1.0)[:, None] * (b - a)
        a = np.where((a_behind & ~b_behind)[:, None], on_plane, a)
        b = np.where((b_behind & ~a_behind)[:, None], on_plane, b)
        hidden = a_behind & b_behind
        a[hidden, 2] = b[hidden, 2] = 1.0  # placeholders, dropped below
        uv_a = a[:, :2] / a[:, 2:3] * self.focal + self.centre
        uv_b = b[:, :2] / b[:, 2:3] * self.focal + self.centre
        outline = self._fixed_point(_capsule_outline(uv_a, uv_b, self.focal * radius / a[:, 2],
                                                     self.focal * radius / b[:, 2]))
        return [None if hidden[i] else outline[i] for i in range(len(outline))]
