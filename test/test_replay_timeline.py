"""vla_pruner_ros.replay.observations: step times, the observation of each step (the same frames
and pixels the node would have used), held steps, episodes and bag errors. No model here."""
import numpy as np
import pytest

from vla_pruner_ros.bags import BagError, BagWriter, deserialize_ros, open_bag, typestore
from vla_pruner_ros.control.images import compressed_to_rgb, image_to_rgb
from vla_pruner_ros.control.inputs import joint_positions_from_msg
from vla_pruner_ros.control.robot_config import load_robot_config
from vla_pruner_ros.replay import load_timeline
from vla_pruner_ros.replay.simbag import NS, START_NS, SimBagSpec, write_sim_bag

ROBOT = load_robot_config()


@pytest.fixture(scope="module")
def raw_bag(tmp_path_factory):
    """2.5 s, cameras + joints at 10 Hz, no stats: steps at a fixed period (MCAP)."""
    return write_sim_bag(tmp_path_factory.mktemp("raw") / "bag", "mcap", SimBagSpec(duration_s=2.5))


@pytest.fixture(scope="module")
def stats_bag(tmp_path_factory):
    """Compressed cameras and the node's stats every 0.3 s (sqlite3)."""
    spec = SimBagSpec(duration_s=2.0, stats_period=0.3, compressed=True)
    return write_sim_bag(tmp_path_factory.mktemp("stats") / "bag", "sqlite3", spec)


def _frame_index(bag, stamp_ns: int) -> int:
    """Index of the newest frame stamped at or before stamp_ns."""
    return max(i for i, s in enumerate(bag.camera_stamps_ns) if s <= stamp_ns)


def test_period_steps_start_when_every_input_is_present_and_pick_the_newest_frames(raw_bag):
    timeline = load_timeline(raw_bag.path, ROBOT, step_period=0.4)
    assert timeline.step_source == "period" and timeline.image_transport == "raw"
    first = raw_bag.joint_stamps_ns[0]  # joints come 1 ms after the frames: the last input to appear
    assert [s.time_ns for s in timeline.steps] == [first + i * 400_000_000 for i in range(len(timeline.steps))]
    assert len(timeline.steps) == 7 and not timeline.held  # 0.001 .. 2.401 s
    for step in timeline.steps:
        frame = _frame_index(raw_bag, step.time_ns)
        for view in ("fixed", "wrist"):
            assert np.array_equal(step.observation.images[view], raw_bag.frames[frame][view])
        # the node's Observation.stamp: the newest stamp among the inputs used
        assert step.observation.stamp == pytest.approx(raw_bag.joint_stamps_ns[frame] / NS)
        assert step.observation.instruction == "move the gripper above the red cube"


def test_a_step_between_frames_uses_the_older_frame(raw_bag):
    # 0.25 s period: steps land between the 10 Hz frames, so each must use the frame before it.
    timeline = load_timeline(raw_bag.path, ROBOT, step_period=0.25)
    for step in timeline.steps:
        frame = _frame_index(raw_bag, step.time_ns)
        assert raw_bag.camera_stamps_ns[frame] <= step.time_ns < raw_bag.camera_stamps_ns[frame] + 100_000_000 + 1
        assert np.array_equal(step.observation.images["fixed"], raw_bag.frames[frame]["fixed"])


def test_observation_matches_the_nodes_conversion_of_the_same_message(raw_bag, stats_bag):
    """The pixels and joint positions equal what the node computes from the rclpy message."""
    for bag, topic, convert in ((raw_bag, "/fixed_camera/color/image_raw", image_to_rgb),
                                (stats_bag, "/fixed_camera/color/image_raw/compressed", compressed_to_rgb)):
        timeline = load_timeline(bag.path, ROBOT)
        step = timeline.steps[2]
        frame = _frame_index(bag, step.time_ns)
        with open_bag(bag.path) as reader:
            message = list(reader.messages([topic]))[frame]
            joints = [m for m in reader.messages(["/joint_states"])][frame]
        node_rgb = convert(deserialize_ros(message.data, message.msgtype))
        assert node_rgb.dtype == np.uint8 and node_rgb.shape == step.observation.images["fixed"].shape
        assert np.array_equal(step.observation.images["fixed"], node_rgb)
        node_joints = joint_positions_from_msg(deserialize_ros(joints.data, joints.msgtype), ROBOT.joints)
        assert np.array_equal(step.observation.joint_positions, node_joints)


def test_stats_steps_run_at_the_online_stamps(stats_bag):
    timeline = load_timeline(stats_bag.path, ROBOT)
    assert timeline.step_source == "stats" and timeline.image_transport == "compressed"
    assert [s.time_ns for s in timeline.steps] == stats_bag.stats_stamps_ns
    assert [s.online["step_index"] for s in timeline.steps] == list(range(len(stats_bag.stats_stamps_ns)))
    assert timeline.steps[0].online["method"] == "vla_pruner" and timeline.steps[0].online["window"] == 3
    # each step's newest input is its joint state, stamped exactly at the step
    assert [s.observation.stamp for s in timeline.steps] == pytest.approx(
        [stamp / NS for stamp in stats_bag.stats_stamps_ns], abs=1e-6)
    # step_source="period" ignores the stats
    period = load_timeline(stats_bag.path, ROBOT, step_source="period", step_period=0.5)
    assert period.step_source == "period" and len(period.steps) == 4


def test_stale_joint_states_hold_the_step_like_the_node(tmp_path):
    spec = SimBagSpec(duration_s=3.0, joint_gap=(1.0, 2.05))  # no joint state from 1.0 to 2.0 s
    bag = write_sim_bag(tmp_path / "gap", "mcap", spec)
    timeline = load_timeline(bag.path, ROBOT, step_period=0.4, max_input_age=0.5)
    held_at = [round((h.time_ns - START_NS) / NS, 3) for h in timeline.held]
    # the last joint state before the gap is at 0.901 s: 1.601 (0.70 s old) and 2.001 (1.10 s) hold
    assert held_at == [1.601, 2.001]
    assert all("joint_states: last message" in h.reason and "max_input_age 0.50" in h.reason for h in timeline.held)
    assert round((timeline.steps[4].time_ns - START_NS) / NS, 3) == 2.401  # resumes when joints are back
    relaxed = load_timeline(bag.path, ROBOT, step_period=0.4, max_input_age=2.0)
    assert not relaxed.held and len(relaxed.steps) == len(timeline.steps) + 2


def test_a_new_instruction_starts_a_new_episode(tmp_path):
    spec = SimBagSpec(duration_s=2.0, instructions=((0.0, "move the gripper above the red cube"),
                                                    (1.0, "move the gripper above the blue cube")))
    bag = write_sim_bag(tmp_path / "two", "sqlite3", spec)
    timeline = load_timeline(bag.path, ROBOT, step_period=0.4)
    assert timeline.instructions == ["move the gripper above the red cube", "move the gripper above the blue cube"]
    episodes = [s.episode for s in timeline.steps]
    assert episodes == [0, 0, 0, 1, 1]  # steps at 0.001, 0.401, 0.801 | 1.201, 1.601
    assert [s.new_episode for s in timeline.steps] == [True, False, False, True, False]
    assert timeline.steps[3].observation.instruction.endswith("blue cube")
    # --instruction overrides the bag: one episode
    forced = load_timeline(bag.path, ROBOT, instruction="  touch the   green cube ")
    assert forced.instructions == ["touch the green cube"] and forced.instruction_source == "--instruction"


def test_max_steps_limits_the_replay(raw_bag):
    timeline = load_timeline(raw_bag.path, ROBOT, max_steps=3)
    assert len(timeline.steps) == 3


def test_missing_and_mistyped_topics_fail_with_the_listing(tmp_path):
    bag = write_sim_bag(tmp_path / "nojoints", "mcap", SimBagSpec(duration_s=0.5, omit_topics=("/joint_states",)))
    with pytest.raises(BagError) as error:
        load_timeline(bag.path, ROBOT)
    text = str(error.value)
    assert "missing topic /joint_states (sensor_msgs/msg/JointState)" in text
    assert "/fixed_camera/color/image_raw  sensor_msgs/msg/Image" in text  # the listing of what it has

    store = typestore()
    path = tmp_path / "wrongtype"
    with BagWriter(path, "mcap", store=store) as writer:
        text = store.types["std_msgs/msg/String"](data="x")
        writer.write_message("/joint_states", START_NS, text, "std_msgs/msg/String")
    with pytest.raises(BagError, match="topic /joint_states has type std_msgs/msg/String; expected "
                                       "sensor_msgs/msg/JointState"):
        load_timeline(path, ROBOT, instruction="go")


def test_a_bag_without_instruction_needs_one(tmp_path):
    bag = write_sim_bag(tmp_path / "noinstr", "mcap", SimBagSpec(duration_s=0.5, omit_topics=("/instruction",)))
    with pytest.raises(BagError, match="has no instruction: neither /vla_pruner_policy/instruction nor /instruction"):
        load_timeline(bag.path, ROBOT)
    assert len(load_timeline(bag.path, ROBOT, instruction="go", step_period=0.2).steps) == 3  # 0.001 .. 0.401 s


def test_bad_arguments_name_the_field(raw_bag):
    with pytest.raises(ValueError, match="step_period"):
        load_timeline(raw_bag.path, ROBOT, step_period=0)
    with pytest.raises(ValueError, match="max_input_age"):
        load_timeline(raw_bag.path, ROBOT, max_input_age=-1)
    with pytest.raises(ValueError, match="step_source"):
        load_timeline(raw_bag.path, ROBOT, step_source="sometimes")
    with pytest.raises(ValueError, match="max_steps"):
        load_timeline(raw_bag.path, ROBOT, max_steps=0)


def test_stats_stamps_rounded_by_float_seconds_still_find_the_newest_input(tmp_path):
    """The node publishes the step stamp through float seconds: a few hundred ns below the input's."""
    # A bag from before PrunerStats named its inputs' stamps: the step time alone must do.
    spec = SimBagSpec(duration_s=1.0, stats_period=0.3, stats_stamp_offset_ns=-300, stats_frame_lag=None)
    bag = write_sim_bag(tmp_path / "rounded", "mcap", spec)
    timeline = load_timeline(bag.path, ROBOT)
    newest = [stamp + 300 for stamp in bag.stats_stamps_ns]  # the joint states the node used
    assert [s.observation.stamp for s in timeline.steps] == pytest.approx([t / NS for t in newest], abs=1e-6)


def test_stats_naming_their_inputs_pick_those_frames_not_the_newest(tmp_path):
    """Online, a frame stamped just before the step's newest input can still be in flight when the
    step begins; the node then used the frame before it. The stats' input stamps say which."""
    spec = SimBagSpec(duration_s=1.6, stats_period=0.3, stats_frame_lag=1)
    bag = write_sim_bag(tmp_path / "lag", "mcap", spec)
    timeline = load_timeline(bag.path, ROBOT)
    assert len(timeline.steps) == len(bag.stats_stamps_ns) >= 4
    for step in timeline.steps:
        newest_frame = _frame_index(bag, step.time_ns)
        used = max(newest_frame - 1, 0)
        assert step.online["input_stamps"]["fixed"] == bag.camera_stamps_ns[used]
        for view in ("fixed", "wrist"):
            assert np.array_equal(step.observation.images[view], bag.frames[used][view])
        if newest_frame > 0:  # the choice really differs from "newest stamped at or before the step"
            assert not np.array_equal(step.observation.images["fixed"], bag.frames[newest_frame]["fixed"])
