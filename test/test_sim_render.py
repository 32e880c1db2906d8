"""Renderer: sizes, determinism, the views follow the arm, cube colours, near-plane clipping."""
import numpy as np
import pytest

from vla_pruner_ros.sim.kinematics import HOME_JOINTS, XArm6Kinematics
from vla_pruner_ros.sim.render import Renderer
from vla_pruner_ros.sim.scene import CUBE_COLOURS, Camera, Scene, look_at

KIN = XArm6Kinematics()
HOME_FRAMES = KIN.forward_kinematics(HOME_JOINTS)


@pytest.fixture(scope="module")
def renderer():
    return Renderer(224, 224)


@pytest.mark.parametrize("height, width", [(224, 224), (112, 112), (240, 320), (96, 160)])
def test_sizes_and_dtype(height, width):
    views = Renderer(width, height).render_views(Scene(0), HOME_FRAMES, 0.0)
    assert set(views) == {"fixed", "wrist"}
    for image in views.values():
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        assert image.std() > 10  # not a blank frame


def test_deterministic_for_seed_and_state():
    frames = KIN.forward_kinematics(HOME_JOINTS + 0.2)
    first = Renderer(224, 224).render_views(Scene(5), frames, 0.3)
    second = Renderer(224, 224).render_views(Scene(5), frames, 0.3)
    again = Renderer(224, 224)
    again.render_views(Scene(1), HOME_FRAMES, 0.0)  # warm its caches with another scene first
    third = again.render_views(Scene(5), frames, 0.3)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
        np.testing.assert_array_equal(first[name], third[name])
    other = Renderer(224, 224).render_views(Scene(6), frames, 0.3)
    assert np.abs(other["fixed"].astype(int) - first["fixed"]).mean() > 0.5


def test_wrist_view_moves_with_the_arm(renderer):
    scene = Scene(0)
    before = renderer.render(scene, HOME_FRAMES, 0.0, "wrist")
    moved = HOME_JOINTS + np.array([0.25, 0.0, 0.0, 0.0, 0.0, 0.0])
    after = renderer.render(scene, KIN.forward_kinematics(moved), 0.0, "wrist")
    assert np.abs(after.astype(int) - before).mean() > 8
    # A small move still changes the picture (sub-pixel drawing, textured table).
    nudged = renderer.render(scene, KIN.forward_kinematics(HOME_JOINTS + 0.002), 0.0, "wrist")
    assert np.any(nudged != before)


def test_fixed_view_shows_the_arm_where_it_is(renderer):
    scene = Scene(0)
    pose = scene.cameras["fixed"].pose()
    moved_joints = HOME_JOINTS + np.array([0.6, 0.3, 0.0, 0.0, 0.0, 0.0])
    before = renderer.render(scene, HOME_FRAMES, 0.0, "fixed").astype(int)
    after = renderer.render(scene, KIN.forward_kinematics(moved_joints), 0.0, "fixed").astype(int)
    changed = np.abs(after - before).sum(-1) > 30
    assert changed.mean() > 0.01
    # The gripper's pixels changed at both its old and its new place.
    for joints in (HOME_JOINTS, moved_joints):
        flange = KIN.forward_kinematics(joints)[6, :3, 3]
        uv, depth = renderer.project(flange, pose, scene.cameras["fixed"].vertical_fov_deg)
        u, v = uv[0]
        assert depth[0] > 0 and 0 <= u < 224 and 0 <= v < 224
        u, v = int(round(u)), int(round(v))
        assert changed[max(0, v - 6):v + 7, max(0, u - 6):u + 7].any()
    # The static background far from the arm and its shadow is untouched.
    assert not changed[210:, :60].any()


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_cube_colours_visible_in_the_fixed_view(renderer, seed):
    scene = Scene(seed)
    camera = scene.cameras["fixed"]
    image = renderer.render(scene, HOME_FRAMES, 0.0, "fixed").astype(int)
    for cube in scene.cubes:
        top_centre = cube.position + [0, 0, cube.size / 2 - 0.002]
        uv, depth = renderer.project(top_centre, camera.pose(), camera.vertical_fov_deg)
        u, v = uv[0]
        assert depth[0] > 0 and 2 <= u < 222 and 2 <= v < 222
        patch = image[int(round(v)) - 1:int(round(v)) + 2, int(round(u)) - 1:int(round(u)) + 2].reshape(-1, 3)
        channel = int(np.argmax(CUBE_COLOURS[cube.colour]))
        others = [c for c in range(3) if c != channel]
        assert np.all(patch[:, channel] > patch[:, others].max(1) + 60), (cube.colour, patch)


def test_gripper_opening_changes_the_wrist_view(renderer):
    scene = Scene(0)
    open_view = renderer.render(scene, HOME_FRAMES, 0.0, "wrist").astype(int)
    closed_view = renderer.render(scene, HOME_FRAMES, 1.0, "wrist").astype(int)
    changed = np.abs(open_view - closed_view).sum(-1) > 30
    # The fingers enter from the bottom edge of the wrist view.
    assert changed[112:].sum() > 200 and changed[:60].sum() == 0


def test_camera_looking_up_sees_only_the_background(renderer):
    camera = Camera("up", 60.0, "world", look_at((0.3, 0.0, 1.5), (0.3, 0.0, 3.0), image_down=(1.0, 0.0, 0.0)))
    image = renderer.render(Scene(0), HOME_FRAMES, 0.0, camera).astype(int)
    # The background is a vertical gradient: every row is a single colour.
    assert np.all(image == image[:, :1])


def test_geometry_behind_the_camera_is_not_drawn(renderer):
    scene = Scene(0)  # cubes and arm all lie at x < 0.8; this camera sits at x = 0.82 looking on
    camera = Camera("away", 60.0, "world", look_at((0.82, 0.0, 0.25), (1.5, 0.0, 0.0)))
    first = renderer.render(scene, HOME_FRAMES, 0.0, camera)
    other = renderer.render(scene, KIN.forward_kinematics(HOME_JOINTS + 0.4), 1.0, camera)
    np.testing.assert_array_equal(first, other)
    assert first.std() > 5  # the table edge and background are there


def test_geometry_cut_by_the_near_plane_is_clipped_not_dropped(renderer):
    scene = Scene(0)
    cube = scene.cube("red")
    c, s = np.cos(cube.yaw), np.sin(cube.yaw)
    forward = np.array([c, s, 0.0])  # the cube's own x axis
    # Eye 1 cm above the middle of the top face, looking level along the cube's x axis: half of
    # the top face lies behind the camera, so the face must be clipped at the near plane.
    eye = cube.position + [0.0, 0.0, cube.size / 2 + 0.01]
    camera = Camera("skim", 90.0, "world", look_at(eye, eye + forward), near=0.002)
    image = renderer.render(scene, HOME_FRAMES, 0.0, camera).astype(int)
    red = (image[..., 0] > 150) & (image[..., 1] < 80) & (image[..., 2] < 80)
    # Seen from 1 cm above, the front half of the face fills the bottom of the picture
    # (from 0.44 focal lengths below the centre down), across the whole width.
    assert red[:150].sum() == 0
    assert red[175:].mean() > 0.9


def test_bad_inputs_raise(renderer):
    with pytest.raises(ValueError, match="width"):
        Renderer(8, 224)
    with pytest.raises(ValueError, match="height"):
        Renderer(224, 100000)
    with pytest.raises(ValueError, match="width"):
        Renderer(224.0, 224)
    with pytest.raises(ValueError, match="link_frames"):
        renderer.render(Scene(0), np.zeros((7, 4, 4)), 0.0)
    with pytest.raises(ValueError, match="unknown camera"):
        renderer.render(Scene(0), HOME_FRAMES, 0.0, "top")
    with pytest.raises(ValueError, match="gripper"):
        renderer.render(Scene(0), HOME_FRAMES, np.nan)
