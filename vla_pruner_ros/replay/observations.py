"""Rebuild, from a bag, the observation the policy node had at each of its control steps.

The node keeps the latest message of each input (``InputBuffer``: the newest *header stamp*
wins, a zero stamp counts as the receive time) and, at each step, converts both camera frames
with ``control.images`` and reads the joint state with ``control.inputs``. Here the same is
done at known step times:

* **Step times.** When the bag holds the node's ``/vla_pruner_policy/stats``, each message is
  one online step and its header stamp is the newest input stamp that step used; the offline
  step runs at that stamp. The stats also name each input's own stamp (``input_stamps``):
  those exact messages are used, since a frame stamped just before the step may still have
  been in flight when the node began it (older bags without the field: the newest message
  stamped at or before the step, within 1 us). Otherwise steps run every ``step_period`` seconds
  (``actions_per_step / control_rate``, 0.4 s by default) from the first moment every input
  is present.
* **Inputs at a step time T.** For each input, the message with the largest stamp <= T. A step
  whose inputs are missing or older than ``max_input_age`` is *held* (not run), with the
  node's reason, as the node would hold.
* **Instruction.** The policy's latched ``/vla_pruner_policy/instruction`` when recorded, else
  ``/instruction``: the latest valid message logged at or before T (String has no header), or
  the first one for steps before it (a bag that starts mid-episode). A change starts a new
  episode, as online. ``instruction=`` overrides the bag.

Stamps and log times are assumed to share one clock (ROS time on one machine, no sim time),
which is the case for ``ros2 bag record`` and ``vla-pruner record`` next to the nodes.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bags import BagError, BagInfo, open_bag, require_topics
from ..control.images import ImageConversionError, compressed_to_rgb, image_to_rgb
from ..control.inputs import clean_instruction, joint_positions_from_msg, optional_joint_position
from ..control.robot_config import RobotConfig
from ..control.runner import Observation

VIEWS = ("fixed", "wrist")  # the node's camera views, in token order
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
JOINT_STATE = "sensor_msgs/msg/JointState"
STRING = "std_msgs/msg/String"
PRUNER_STATS = "vla_pruner_ros/msg/PrunerStats"
RETAINED_TOKEN_MASK = "vla_pruner_ros/msg/RetainedTokenMask"
STEP_SOURCES = ("auto", "stats", "period")
NS = 1_000_000_000
# The node stamps its stats with the newest input stamp *as float seconds* (rclpy
# Time(seconds=...)), which moves it by up to a few hundred ns; inputs are >= 1 ms apart.
STATS_STAMP_TOLERANCE_NS = 1_000


@dataclass(frozen=True)
class ReplayTopics:
    """Topic names of the node's inputs (its start-up parameters) and of its stats."""

    fixed_camera: str = "/fixed_camera/color/image_raw"
    wrist_camera: str = "/wrist_camera/color/image_raw"
    joint_states: str = "/joint_states"
    instruction: str = "/instruction"
    policy_instruction: str = "/vla_pruner_policy/instruction"  # latched: the instruction in effect
    stats: str = "/vla_pruner_policy/stats"
    retained_tokens: str = "/vla_pruner_policy/retained_tokens"  # optional: to compare with online

    def camera(self, view: str) -> str:
        return {"fixed": self.fixed_camera, "wrist": self.wrist_camera}[view]


@dataclass
class ReplayStep:
    index: int  # position among the steps that run (0-based)
    time_ns: int  # step time (stamp clock)
    episode: int  # 0-based; a new instruction or an online episode reset starts the next
    new_episode: bool  # the runner must be reset before this step
    observation: Observation
    online: dict | None = None  # the recorded PrunerStats of this step (stats mode)


@dataclass
class HeldStep:
    time_ns: int
    reason: str


@dataclass
class ReplayTimeline:
    """Every control step of a bag, ready to run."""

    info: BagInfo
    steps: list[ReplayStep]
    held: list[HeldStep]
    step_source: str  # "stats" or "period"
    step_period: float | None  # seconds, period mode only
    camera_topics: dict[str, str]  # view -> topic read
    image_transport: str  # "raw" or "compressed"
    instruction_source: str  # topic read, or "--instruction"
    instructions: list[str] = field(default_factory=list)  # of each episode
    skipped_messages: dict[str, int] = field(default_factory=dict)  # undecodable, per topic

    @property
    def origin_ns(self) -> int:
        return self.info.start_ns

    def seconds(self, time_ns: int) -> float:
        """Seconds since the first message of the bag."""
        return (time_ns - self.origin_ns) / NS


# ------------------------------------------------------------------------------ bag indexing
@dataclass
class _Series:
    """Messages of one input, sorted by (stamp, log time); values aligned with the stamps."""

    stamps: list[int] = field(default_factory=list)
    logs: list[int] = field(default_factory=list)
    values: list = field(default_factory=list)

    def add(self, stamp: int, log: int, value) -> None:
        self.stamps.append(stamp)
        self.logs.append(log)
        self.values.append(value)

    def sort(self) -> None:
        order = sorted(range(len(self.stamps)), key=lambda i: (self.stamps[i], self.logs[i]))
        self.stamps = [self.stamps[i] for i in order]
        self.logs = [self.logs[i] for i in order]
        self.values = [self.values[i] for i in order]

    def latest(self, time_ns: int) -> int | None:
        """Index of the message with the largest stamp <= time_ns (the later logged on ties)."""
        position = bisect.bisect_right(self.stamps, time_ns)
        return position - 1 if position else None

    def exact(self, stamp_ns: int) -> int | None:
        """Index of the message stamped exactly stamp_ns (the later logged on ties), else None."""
        index = self.latest(stamp_ns)
        return index if index is not None and self.stamps[index] == stamp_ns else None


def _stamp_ns(header, log_ns: int) -> int:
    stamp = int(header.stamp.sec) * NS + int(header.stamp.nanosec)
    return stamp if stamp else log_ns  # an unstamped message counts from its arrival, as online


def _camera_topics(info: BagInfo, topics: ReplayTopics) -> tuple[dict[str, str], str, dict]:
    """Pick raw or compressed per the bag (both views the same, like the node's image_transport)."""
    raw = all(topics.camera(v) in info.topics for v in VIEWS)
    compressed = all(topics.camera(v).rstrip("/") + "/compressed" in info.topics for v in VIEWS)
    if compressed and not raw:
        chosen = {v: topics.camera(v).rstrip("/") + "/compressed" for v in VIEWS}
        return chosen, "compressed", {t: COMPRESSED_IMAGE for t in chosen.values()}
    chosen = {v: topics.camera(v) for v in VIEWS}
    return chosen, "raw", {t: IMAGE for t in chosen.values()}


def _instruction_topic(info: BagInfo, topics: ReplayTopics) -> str | None:
    for topic in (topics.policy_instruction, topics.instruction):
        if topic in info.topics and info.topics[topic].count:
            return topic
    return None


def check_bag(info: BagInfo, topics: ReplayTopics = ReplayTopics(), instruction: str | None = None,
              step_source: str = "auto") -> dict[str, str | tuple[str, ...]]:
    """The topics the replay will read, with their types; BagError (listing what the bag has)
    when one is missing or of another type. Nothing is read yet."""
    if step_source not in STEP_SOURCES:
        raise ValueError(f"step_source={step_source!r}: expected one of {', '.join(STEP_SOURCES)}")
    camera_topics, _, needed = _camera_topics(info, topics)
    needed = dict(needed)
    needed[topics.joint_states] = JOINT_STATE
    if instruction is None:
        topic = _instruction_topic(info, topics)
        if topic is None:
            raise BagError(
                f"bag {str(info.path)!r} has no instruction: neither {topics.policy_instruction} nor "
                f"{topics.instruction} ({STRING}) has messages; pass --instruction TEXT\n{info.listing()}")
        needed[topic] = STRING
    recorded_stats = topics.stats in info.topics and info.topics[topics.stats].count > 0
    if step_source == "stats" or (step_source == "auto" and recorded_stats):
        needed[topics.stats] = PRUNER_STATS
    require_topics(info, needed)
    if recorded_stats and needed.get(topics.stats) and topics.retained_tokens in info.topics \
            and info.topics[topics.retained_tokens].msgtype == RETAINED_TOKEN_MASK:
        needed[topics.retained_tokens] = RETAINED_TOKEN_MASK  # optional, read when recorded
    return needed


def _index_bag(bag, needed: dict, camera_topics: dict[str, str], topics: ReplayTopics,
               robot: RobotConfig) -> tuple[dict[str, _Series], _Series, _Series, list, list, dict[str, int]]:
    """One pass over the input topics: stamps of every frame (pixels are read later, only for
    the frames a step uses), joint positions, the gripper, instructions and online steps."""
    view_of = {topic: view for view, topic in camera_topics.items()}
    frames = {view: _Series() for view in VIEWS}
    joints, gripper = _Series(), _Series()
    instructions: list[tuple[int, str]] = []
    stats: list[tuple[int, int, dict]] = []
    masks: dict[int, np.ndarray] = {}  # online kept indices by step stamp
    skipped: dict[str, int] = {}
    ordinal = {topic: 0 for topic in view_of}
    for message in bag.messages(list(needed)):
        try:
            msg = bag.deserialize(message)
        except BagError:
            # The node drops an undecodable message and goes on; so does the replay.
            skipped[message.topic] = skipped.get(message.topic, 0) + 1
            if message.topic in ordinal:
                ordinal[message.topic] += 1
            continue
        log = message.timestamp_ns
        if message.topic in view_of:
            frames[view_of[message.topic]].add(_stamp_ns(msg.header, log), log, ordinal[message.topic])
            ordinal[message.topic] += 1
        elif message.topic == topics.joint_states:
            stamp = _stamp_ns(msg.header, log)
            position = optional_joint_position(msg, robot.gripper_joint)
            if position is not None:
                gripper.add(stamp, log, position)
            try:
                joints.add(stamp, log, joint_positions_from_msg(msg, robot.joints))
            except ValueError:
                pass  # e.g. the gripper's own joint state: not an arm state (the node ignores it too)
        elif message.topic == topics.stats:
            stats.append((_stamp_ns(msg.header, log), log, _online_fields(msg)))
        elif message.topic == topics.retained_tokens:
            masks[_stamp_ns(msg.header, log)] = np.asarray(msg.kept_indices, dtype=np.int64)
        else:  # the instruction topic
            try:
                instructions.append((log, clean_instruction(msg.data)))
            except ValueError:
                pass  # refused online too (empty, not UTF-8, too long): the previous one stays
    for series in (*frames.values(), joints, gripper):
        series.sort()
    for stamp, _, online in stats:
        if stamp in masks:
            online["kept_indices"] = masks[stamp]
    return frames, joints, gripper, instructions, stats, skipped


def _online_fields(msg) -> dict:
    """What the online step ran (its pruner settings) and what it measured."""
    return {
        "step_index": int(msg.step_index),
        "method": str(msg.method) if msg.enabled else "none",
        "keep_ratio": float(msg.keep_ratio),
        "prune_layer": int(msg.prune_layer),
        "smoothing": str(msg.smoothing),
        "window": int(msg.window),
        "decay": float(msg.decay),
        "warmup": bool(msg.warmup),
        "kept_tokens": int(msg.visual_tokens_after),
        "total_ms": float(msg.total_ms),
        # {input: its header stamp in ns} as the node used it (empty in bags from before the field)
        "input_stamps": {str(name): int(stamp.sec) * NS + int(stamp.nanosec)
                         for name, stamp in zip(getattr(msg, "input_names", ()), getattr(msg, "input_stamps", ()))},
    }


def _instruction_at(instructions: list[tuple[int, str]], time_ns: int) -> str | None:
    """The latest instruction logged at or before time_ns, or the first one before it."""
    if not instructions:
        return None
    position = bisect.bisect_right([log for log, _ in instructions], time_ns)
    return instructions[max(position - 1, 0)][1]


def _period_step_times(frames, joints, period_ns: int) -> list[int]:
    inputs = [*frames.values(), joints]
    if any(not series.stamps for series in inputs):
        return []
    first = max(series.stamps[0] for series in inputs)
    last = max(series.stamps[-1] for series in inputs)
    count = (last - first) // period_ns + 1
    return [first + i * period_ns for i in range(int(count))]


# ------------------------------------------------------------------------------ the timeline
def load_timeline(path: str | Path, robot: RobotConfig, topics: ReplayTopics = ReplayTopics(),
                  step_source: str = "auto", step_period: float = 0.4, max_input_age: float = 0.5,
                  instruction: str | None = None, max_steps: int | None = None) -> ReplayTimeline:
    """Read a bag (directory, .mcap or .db3) and rebuild the observation of every control step.

    Raises BagError for a bag that cannot be read or lacks an input (the message lists the
    bag's topics and types), ValueError for bad arguments.
    """
    if not step_period > 0:
        raise ValueError(f"step_period={step_period!r}: expected seconds > 0")
    if not max_input_age > 0:
        raise ValueError(f"max_input_age={max_input_age!r}: expected seconds > 0")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps={max_steps!r}: expected a positive integer or None")
    if instruction is not None:
        instruction = clean_instruction(instruction)
    with open_bag(path) as bag:
        info = bag.info
        needed = check_bag(info, topics, instruction, step_source)
        camera_topics, transport, _ = _camera_topics(info, topics)
        frames, joints, gripper, instructions, stats, skipped = _index_bag(bag, needed, camera_topics, topics, robot)
        if instruction is not None:
            instructions, instruction_source = [(0, instruction)], "--instruction"
        else:
            instruction_source = _instruction_topic(info, topics)
            if not instructions:
                raise BagError(f"bag {str(path)!r}: {instruction_source} holds no usable instruction (all "
                               f"empty or invalid); pass --instruction TEXT\n{info.listing()}")
        use_stats = step_source == "stats" or (step_source == "auto" and bool(stats))
        if use_stats:
            stats.sort(key=lambda item: item[1])  # online order
            schedule = [(stamp, online) for stamp, _, online in stats]
        else:
            period_ns = round(step_period * NS)
            schedule = [(t, None) for t in _period_step_times(frames, joints, period_ns)]

        # Decide every step first; pixels are read afterwards for the frames actually used.
        max_age_ns = round(max_input_age * NS)
        tolerance_ns = STATS_STAMP_TOLERANCE_NS if use_stats else 0
        planned, held = [], []
        for time_ns, online in schedule:
            picks, problems = {}, []
            used = online["input_stamps"] if online else {}
            for name, series in {**frames, "joint_states": joints}.items():
                # The very message the node used when the stats name it; else the newest by stamp.
                index = series.exact(used[name]) if name in used else None
                if index is None:
                    index = series.latest(time_ns + tolerance_ns)
                if index is None:
                    problems.append(f"{name}: nothing received yet")
                    continue
                age_ns = time_ns - series.stamps[index]
                if age_ns > max_age_ns:
                    problems.append(f"{name}: last message {age_ns / NS:.2f} s old > max_input_age "
                                    f"{max_input_age:.2f} s")
                picks[name] = index
            if problems:
                held.append(HeldStep(time_ns, "holding: " + "; ".join(problems)))
                continue
            planned.append((time_ns, online, picks, _instruction_at(instructions, time_ns)))
            if max_steps is not None and len(planned) >= max_steps:
                break
        images = _read_frames(bag, camera_topics, frames, planned, transport)

    inputs = {**frames, "joint_states": joints}
    steps, episodes = [], []
    for time_ns, online, picks, text in planned:
        pixels, problems = {}, []
        for view in VIEWS:
            image = images[(view, frames[view].values[picks[view]])]
            if isinstance(image, str):
                problems.append(f"{view} camera: {image}")
            else:
                pixels[view] = image
        if problems:
            held.append(HeldStep(time_ns, "holding: bad input: " + "; ".join(problems)))
            continue
        # An online step_index back at 0 with the same instruction: ~/reset_episode was called.
        online_reset = online is not None and online["step_index"] == 0 and bool(steps)
        new_episode = not episodes or text != episodes[-1] or online_reset
        if new_episode:
            episodes.append(text)
        grip = gripper.latest(time_ns + tolerance_ns)
        observation = Observation(
            images=pixels,
            joint_positions=joints.values[picks["joint_states"]],
            gripper_position=gripper.values[grip] if grip is not None else 0.0,  # the node starts at 0
            instruction=text,
            stamp=max(series.stamps[picks[name]] for name, series in inputs.items()) / NS,
        )
        steps.append(ReplayStep(index=len(steps), time_ns=time_ns, episode=len(episodes) - 1,
                                new_episode=new_episode, observation=observation, online=online))
    held.sort(key=lambda h: h.time_ns)
    return ReplayTimeline(
        info=info, steps=steps, held=held, step_source="stats" if use_stats else "period",
        step_period=None if use_stats else float(step_period), camera_topics=camera_topics,
        image_transport=transport, instruction_source=instruction_source, instructions=episodes,
        skipped_messages=skipped)


def _read_frames(bag, camera_topics: dict[str, str], frames: dict[str, _Series], planned: list,
                 transport: str) -> dict[tuple[str, int], np.ndarray | str]:
    """{(view, ordinal): RGB array, or the conversion error text} for the frames the steps use,
    converted with the node's own functions."""
    wanted = {(view, frames[view].values[picks[view]]) for _, _, picks, _ in planned for view in VIEWS}
    view_of = {topic: view for view, topic in camera_topics.items()}
    convert = compressed_to_rgb if transport == "compressed" else image_to_rgb
    ordinal = {topic: 0 for topic in view_of}
    images: dict[tuple[str, int], np.ndarray | str] = {}
    if not wanted:
        return images
    for message in bag.messages(list(view_of)):
        key = (view_of[message.topic], ordinal[message.topic])
        ordinal[message.topic] += 1
        if key not in wanted:
            continue
        try:
            images[key] = convert(bag.deserialize(message))
        except ImageConversionError as error:
            images[key] = str(error)
        if len(images) == len(wanted):
            break
    return images
