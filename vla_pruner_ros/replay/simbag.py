"""Write a small rosbag2 episode from the simulator, without ROS: what the replay reads.

Both camera views (rendered by ``sim.Renderer``), ``/joint_states`` (arm + gripper, as the
simulated xArm6 publishes them), the instruction, and optionally the node's
``/vla_pruner_policy/stats`` at a fixed step period (each stamped, like the node's, with the
newest input stamp the step would have used). The arm follows the scripted expert. Used by
the tests, and handy to try ``vla-pruner replay`` on a machine without ROS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..bags import BagWriter, typestore
from ..control.images import rgb_to_image_fields

NS = 1_000_000_000
START_NS = 1_700_000_000 * NS  # stamps start here (any fixed epoch keeps bags reproducible)
RECEIVE_DELAY_NS = 2_000_000  # log time = stamp + 2 ms, like a recorder on the same machine


@dataclass
class SimBagSpec:
    duration_s: float = 2.0
    camera_rate: float = 10.0  # Hz of both cameras and of the joint states (one sim step each)
    image_size: tuple[int, int] = (96, 128)  # height, width
    instructions: tuple[tuple[float, str], ...] = ((0.0, "move the gripper above the red cube"),)
    instruction_topic: str = "/instruction"
    stats_period: float | None = None  # write PrunerStats every this many seconds (None: no stats)
    stats_stamp_offset_ns: int = 0  # added to the stats stamps (the node's float-seconds rounding)
    compressed: bool = False  # cameras as CompressedImage (PNG) on <topic>/compressed
    omit_topics: tuple[str, ...] = ()  # topics to leave out (to make an incomplete bag)
    joint_gap: tuple[float, float] | None = None  # (from_s, to_s): no joint states in this span
    # >0: the stats name camera frames this many frames older than the newest (frames that were
    # still in flight when the node began the step); None: stats without input stamps (old bags)
    stats_frame_lag: int | None = 0
    seed: int = 0


@dataclass
class SimBag:
    path: Path
    camera_stamps_ns: list[int] = field(default_factory=list)  # one per frame, both views share it
    joint_stamps_ns: list[int] = field(default_factory=list)
    stats_stamps_ns: list[int] = field(default_factory=list)
    frames: list[dict[str, np.ndarray]] = field(default_factory=list)  # RGB of each view per frame


CAMERA_TOPICS = {"fixed": "/fixed_camera/color/image_raw", "wrist": "/wrist_camera/color/image_raw"}


def write_sim_bag(path: str | Path, storage: str = "mcap", spec: SimBagSpec = SimBagSpec()) -> SimBag:
    """Record ``spec.duration_s`` of a scripted sim episode into a new bag at ``path``."""
    from ..sim import ScriptedExpert, SimEnv

    if spec.camera_rate <= 0 or spec.duration_s <= 0:
        raise ValueError(f"camera_rate and duration_s must be > 0, got {spec.camera_rate}, {spec.duration_s}")
    store = typestore()
    types = store.types
    Header, Time = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]
    period = 1.0 / spec.camera_rate
    env = SimEnv(seed=spec.seed, image_size=spec.image_size, control_period=period)
    env.reset(seed=spec.seed)
    expert = ScriptedExpert(env.kinematics, control_period=period)
    out = SimBag(Path(path))

    def header(stamp_ns: int, frame_id: str = ""):
        return Header(stamp=Time(sec=stamp_ns // NS, nanosec=stamp_ns % NS), frame_id=frame_id)

    def wanted(topic: str) -> bool:
        return topic not in spec.omit_topics

    with BagWriter(path, storage, store=store) as bag:
        for at, text in spec.instructions:
            if wanted(spec.instruction_topic):
                bag.write_message(spec.instruction_topic, START_NS + round(at * NS),
                                  types["std_msgs/msg/String"](data=text), "std_msgs/msg/String")
        next_stats, step_index = 0.0, 0
        for frame in range(int(spec.duration_s * spec.camera_rate)):
            t = frame * period
            stamp = START_NS + round(t * NS)
            observation = env.observation()
            out.camera_stamps_ns.append(stamp)
            out.frames.append(observation["images"])
            for view, topic in CAMERA_TOPICS.items():
                rgb = observation["images"][view]
                if spec.compressed:
                    topic = topic + "/compressed"
                    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
                    msg = types["sensor_msgs/msg/CompressedImage"](header=header(stamp, f"{view}_camera"),
                                                                  format="png", data=png.reshape(-1))
                    msgtype = "sensor_msgs/msg/CompressedImage"
                else:
                    fields = rgb_to_image_fields(rgb)
                    fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
                    msg = types["sensor_msgs/msg/Image"](header=header(stamp, f"{view}_camera"), **fields)
                    msgtype = "sensor_msgs/msg/Image"
                if wanted(topic):
                    bag.write_message(topic, stamp + RECEIVE_DELAY_NS, msg, msgtype)
            in_gap = spec.joint_gap is not None and spec.joint_gap[0] <= t < spec.joint_gap[1]
            joint_stamp = stamp + 1_000_000  # 1 ms after the frames: the newest input of a step
            if wanted("/joint_states") and not in_gap:
                state = env.arm.joint_state(include_gripper=True)
                msg = types["sensor_msgs/msg/JointState"](
                    header=header(joint_stamp), name=state["name"], position=np.asarray(state["position"], float),
                    velocity=np.asarray(state["velocity"], float), effort=np.zeros(0))
                bag.write_message("/joint_states", joint_stamp + RECEIVE_DELAY_NS, msg, "sensor_msgs/msg/JointState")
                out.joint_stamps_ns.append(joint_stamp)
            if spec.stats_period is not None and t >= next_stats - 1e-9:
                newest = max(stamp, out.joint_stamps_ns[-1] if out.joint_stamps_ns else stamp)
                newest += spec.stats_stamp_offset_ns
                inputs = None
                if spec.stats_frame_lag is not None:
                    lag = min(spec.stats_frame_lag, len(out.camera_stamps_ns) - 1)
                    frame = out.camera_stamps_ns[-1 - lag]
                    inputs = {"fixed": frame, "wrist": frame,
                              "joint_states": out.joint_stamps_ns[-1] if out.joint_stamps_ns else frame}
                bag.write_message("/vla_pruner_policy/stats", newest + 50_000_000,
                                  _stats_message(types, header(newest), step_index, inputs),
                                  "vla_pruner_ros/msg/PrunerStats")
                out.stats_stamps_ns.append(newest)
                next_stats += spec.stats_period
                step_index += 1
            if not env.done:  # once the expert succeeds the arm stays where it is
                env.step(expert.next_action(env.episode, env.arm.joints, env.arm.gripper))
    return out


def _stats_message(types, header, step_index: int, inputs: dict[str, int] | None = None):
    PrunerStats, Time = types["vla_pruner_ros/msg/PrunerStats"], types["builtin_interfaces/msg/Time"]
    fields = {name: 0 for name in PrunerStats.__dataclass_fields__ if name != "__msgtype__"}
    inputs = inputs or {}
    fields.update(header=header, step_index=step_index, method="vla_pruner", enabled=True, keep_ratio=0.25,
                  prune_layer=3, smoothing="window", window=3, decay=0.8, warmup=step_index < 3,
                  action_source="temporal", shift_reason="", fallback="",
                  input_names=list(inputs),
                  input_stamps=[Time(sec=stamp // NS, nanosec=stamp % NS) for stamp in inputs.values()])
    return PrunerStats(**fields)
