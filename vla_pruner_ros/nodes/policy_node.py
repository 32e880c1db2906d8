"""Policy node: two cameras + joint states + instruction in, xArm6 joint trajectories out.

One control step, end to end:
  camera/joint callbacks store the latest message (``InputBuffer``)
  -> the control timer sees every input fresh and no step in flight
  -> the worker thread converts the frames and runs ``PolicyRunner.step`` (OFT forward with
     VLA-Pruner dropping visual tokens at layer K, safety limits on the action chunk)
  -> trajectory, gripper command, retained-token mask, overlays, stats and diagnostics are
     published.
Parameters change live and apply from the next step; invalid values are refused whole.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import SetParameters
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.exceptions import ParameterNotDeclaredException
from rclpy.parameter import Parameter
from rclpy.parameter_service import ParameterService
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_pruner_ros.control.images import (
    LatestFrameDecoder,
    compressed_to_rgb,
    make_image_converter,
    rgb_to_image_fields,
)
from vla_pruner_ros.control.inputs import (
    InputBuffer,
    clean_instruction,
    joint_positions_from_msg,
    optional_joint_position,
    string_message_bytes,
)
from vla_pruner_ros.control.overlay import draw_retained_tokens
from vla_pruner_ros.control.params import (
    FLOAT_PARAMETERS,
    PARAMETERS,
    apply_parameter_changes,
    settings_from_parameters,
)
from vla_pruner_ros.control.robot_config import load_robot_config
from vla_pruner_ros.control.runner import (
    Observation,
    PolicyRunner,
    StaleStepError,
    StepResult,
    format_stats_line,
    recheck_before_publish,
    view_grids,
)
from vla_pruner_ros.control.safety import JointStateOutOfLimits, check_joint_state, velocity_limit
from vla_pruner_ros.model.processing_oft import CENTER_CROP_AREA
from vla_pruner_ros.msg import PrunerStats, RetainedTokenMask

from ._common import RateLimitedLogger, descriptor, shorten_gil_switch_interval, spin_node, stamp_to_seconds

VIEWS = ("fixed", "wrist")
OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR

# Start-up parameters (read-only once the node runs): name -> (default, description)
STARTUP_PARAMETERS = {
    "checkpoint": ("", "OFT checkpoint directory (local path)."),
    "robot_config": ("", "Robot config YAML (joints, limits, action mapping); default config/xarm6.yaml."),
    "device": ("auto", "Torch device: auto, cpu, cuda, cuda:N."),
    "dtype": ("auto", "auto (bf16 on CUDA and on a CPU with native bf16, i.e. avx512_bf16/AMX; else float32), float32, "
               "bfloat16 or float16."),
    "unnorm_key": ("", "dataset_statistics.json key used to un-normalise actions."),
    "chunk_length": (0, "Actions per chunk; 0: the checkpoint's (real OFT checkpoints do not record it: LIBERO 8)."),
    "center_crop": ("auto", "auto (the checkpoint's), true or false: OFT's test-time center crop."),
    "camera_topics.fixed": ("/fixed_camera/color/image_raw", "Fixed (third-person) camera topic."),
    "camera_topics.wrist": ("/wrist_camera/color/image_raw", "Wrist camera topic."),
    "image_transport": ("raw", "raw (sensor_msgs/Image) or compressed (CompressedImage on <topic>/compressed)."),
    "joint_states_topic": ("/joint_states", "sensor_msgs/JointState topic."),
    "instruction_topic": ("/instruction", "std_msgs/String topic that sets the instruction."),
    "autostart": (False, "Enable motion output at start-up (otherwise call ~/enable_motion)."),
    "log_steps": (False, "Log one line per step (method, keep ratio, tokens kept, latency)."),
}


class AllOrNothingParameterService(ParameterService):
    """rclpy's parameter services, except that a SetParameters request (``ros2 param set``, and
    ``ros2 param load``, which sends a whole file in one request) is applied all or nothing:
    rclpy sets its parameters one by one, so one bad value left the others applied. Entries
    equal to the current value are no-ops (a dumped file names read-only parameters too)."""

    def _set_parameters_callback(self, request: SetParameters.Request, response: SetParameters.Response):
        node = self._get_node()
        parameters = [Parameter.from_parameter_msg(p) for p in request.parameters]
        changes = [p for p in parameters if not node.has_parameter(p.name) or p.name == ""
                   or node.get_parameter(p.name).type_ != p.type_ or node.get_parameter(p.name).value != p.value]
        try:
            result = node.set_parameters_atomically(changes) if changes else SetParametersResult(successful=True)
        except ParameterNotDeclaredException as error:
            result = SetParametersResult(successful=False, reason=f"parameter not declared: {error}")
        if not result.successful and len(parameters) > 1:
            result.reason += f" (none of the {len(parameters)} parameters of this request was applied)"
        if not result.successful:
            # `ros2 param set` exits 0 even when refused (it prints the reason): log it here too.
            node.get_logger().warning(f"parameter change refused: {result.reason}")
        response.results = [SetParametersResult(successful=result.successful, reason=result.reason)
                            for _ in parameters]
        return response

    def _set_parameters_atomically_callback(self, request, response):
        response = super()._set_parameters_atomically_callback(request, response)
        if not response.result.successful:
            self._get_node().get_logger().warning(f"parameter change refused: {response.result.reason}")
        return response


class PolicyNode(Node):
    def __init__(self, policy=None, node_name: str = "vla_pruner_policy", **kwargs):
        start_parameter_services = kwargs.pop("start_parameter_services", True)
        super().__init__(node_name, start_parameter_services=False, **kwargs)
        if start_parameter_services:
            AllOrNothingParameterService(self)
        # Whatever process hosts this node (its own, the soak, a test, a composition), its torch
        # step must not wait on GIL hand-overs behind the executor threads (see _common).
        shorten_gil_switch_interval()
        self._log = RateLimitedLogger(self.get_logger())
        for name, (default, text) in STARTUP_PARAMETERS.items():
            self.declare_parameter(name, default, descriptor(text, read_only=True))
        for spec in PARAMETERS:
            constraints = f"one of: {', '.join(spec.choices)}" if spec.choices else ""
            if spec.exclusive_minimum:
                constraints = f"> {spec.minimum}"
            self.declare_parameter(spec.name, spec.default, descriptor(
                spec.description, minimum=spec.minimum, maximum=spec.maximum, constraints=constraints))
        param = self.get_parameter

        self.robot = load_robot_config(param("robot_config").value or None)
        if policy is None:
            policy = self._load_policy()
        self.runner = PolicyRunner(policy, self.robot)
        # With OFT's center crop the patch grid covers the central sqrt(area) of each image side.
        processor = getattr(policy, "image_processor", None)
        self._overlay_crop_scale = (math.sqrt(CENTER_CROP_AREA)
                                    if getattr(processor, "center_crop", False) else 1.0)
        current = {spec.name: param(spec.name).value for spec in PARAMETERS}
        self._settings = settings_from_parameters(current, self.runner.num_layers)
        self._settings_lock = threading.Lock()
        self.add_pre_set_parameters_callback(self._integers_for_floats)
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self._inputs = InputBuffer(required=(*VIEWS, "joint_states"))
        self._image_to_rgb = make_image_converter()  # cv_bridge when installed
        # Frames are decoded on their own thread as they arrive (newest only), never on the thread
        # that decides whether to command the arm; a frame over max_image_pixels is refused undecoded.
        self._decoder = LatestFrameDecoder(self._decode_frame, self._frame_decoded, name="policy_frames")
        self._gripper_position = 0.0
        self._input_errors: dict[str, str] = {}
        self._motion_enabled = bool(param("autostart").value)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy_step")
        self._in_flight: Future | None = None
        self._last_step_start: float | None = None  # the next step is due step_period after it
        self._commanding = False  # a trajectory we sent may still be executing
        self._status = (WARN, "waiting for inputs", {})
        self._status_lock = threading.Lock()
        self._steps_done = 0
        self._failed_steps = 0
        self._last_result: StepResult | None = None

        inputs_group = ReentrantCallbackGroup()
        self._control_group = MutuallyExclusiveCallbackGroup()
        compressed = param("image_transport").value == "compressed"
        if param("image_transport").value not in ("raw", "compressed"):
            raise ValueError(f"image_transport must be raw or compressed, got {param('image_transport').value!r}")
        # Cameras and joint states: only the newest message matters, so best effort, shallow
        # queues (compatible with reliable publishers too). The instruction is reliable.
        for view in VIEWS:
            topic = param(f"camera_topics.{view}").value
            if compressed:
                self._subscribe(CompressedImage, topic.rstrip("/") + "/compressed", f"{view} camera",
                                lambda msg, v=view: self._on_image(v, msg, True), qos_profile_sensor_data, inputs_group)
            else:
                self._subscribe(Image, topic, f"{view} camera", lambda msg, v=view: self._on_image(v, msg, False),
                                qos_profile_sensor_data, inputs_group)
        self._subscribe(JointState, param("joint_states_topic").value, "joint_states", self._on_joint_state,
                        qos_profile_sensor_data, inputs_group)
        self._subscribe(String, param("instruction_topic").value, "instruction", self._on_instruction,
                        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE), inputs_group, raw=True)

        # Commands, masks and stats are recorded and compared later: reliable.
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._trajectory_pub = self.create_publisher(JointTrajectory, self.robot.trajectory_topic, reliable)
        self._gripper_pub = (self.create_publisher(JointTrajectory, self.robot.gripper_topic, reliable)
                             if self.robot.gripper_action_index is not None else None)
        self._mask_pub = self.create_publisher(RetainedTokenMask, "~/retained_tokens", reliable)
        self._stats_pub = self.create_publisher(PrunerStats, "~/stats", reliable)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)
        # The instruction in effect, latched: a recorder or replay started later still gets it.
        self._instruction_pub = self.create_publisher(String, "~/instruction", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self._instruction_pub.publish(String(data=self._settings.instruction))
        self._overlay_pubs = {view: self.create_publisher(Image, f"~/overlay/{view}",
                                                          QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
                              for view in VIEWS}
        self._camera_frames: dict[str, str] = {}  # view -> frame_id of its last image (overlays keep it)

        self.create_service(SetBool, "~/enable_motion", self._on_enable_motion)
        self.create_service(Trigger, "~/reset_episode", self._on_reset_episode)
        self.create_timer(0.01, self._tick, callback_group=self._control_group)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f"ready: {self._settings.pruner.method} keep {self._settings.pruner.keep_ratio} at layer "
            f"{self._settings.pruner.prune_layer}; motion {'enabled' if self._motion_enabled else 'disabled (call ~/enable_motion)'}")

    # --- start-up ----------------------------------------------------------------------------
    def _load_policy(self):
        from vla_pruner_ros.model import load_policy

        checkpoint = self.get_parameter("checkpoint").value
        if not checkpoint:
            raise ValueError("parameter 'checkpoint' is empty: give the OFT checkpoint directory")
        import torch

        device = self.get_parameter("device").value
        dtype_name = self.get_parameter("dtype").value
        dtypes = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype_name not in dtypes:
            raise ValueError(f"parameter 'dtype' is {dtype_name!r}; expected one of {', '.join(dtypes)}")
        crop = self.get_parameter("center_crop").value
        crops = {"auto": None, "true": True, "false": False}
        if crop not in crops:
            raise ValueError(f"parameter 'center_crop' is {crop!r}; expected auto, true or false")
        chunk_length = self.get_parameter("chunk_length").value
        self.get_logger().info(f"loading policy from {checkpoint} ...")
        started = time.perf_counter()
        policy = load_policy(
            checkpoint,
            device=None if device == "auto" else device,
            dtype=dtypes[dtype_name],
            unnorm_key=self.get_parameter("unnorm_key").value or None,
            chunk_length=chunk_length or None,
            center_crop=crops[crop],
        )
        self.get_logger().info(f"policy loaded in {time.perf_counter() - started:.1f} s; runs in "
                               f"{policy.dtype_choice.describe()} on {policy.device}")
        self.get_logger().info(f"preprocessing: {policy.preprocessing_summary()}")
        # Otherwise the first step is the slowest (first-call set-up) and can outlive max_input_age.
        self.get_logger().info(f"warm-up step: {policy.warm_up():.0f} ms")
        return policy

    # --- parameters ----------------------------------------------------------------------------
    @staticmethod
    def _integers_for_floats(parameters: list[Parameter]) -> list[Parameter]:
        """`ros2 param set ... prune.keep_ratio 1` sends an integer: take it as the float it means."""
        return [Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
                if p.name in FLOAT_PARAMETERS and p.type_ == Parameter.Type.INTEGER else p for p in parameters]

    def _validate_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters}
        try:
            undeclared = [p.name for p in parameters if not self.has_parameter(p.name)]
            if undeclared:
                raise ValueError(f"no such parameter: {', '.join(repr(n) for n in undeclared)} "
                                 "(`ros2 param list` shows this node's parameters)")
            with self._settings_lock:
                new = apply_parameter_changes(self._settings, changes, self.runner.num_layers)
                if "instruction" in changes:
                    self.runner.check_instruction(new.instruction)
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        changes = {p.name: p.value for p in parameters}
        with self._settings_lock:
            self._settings = apply_parameter_changes(self._settings, changes, self.runner.num_layers)
        if "instruction" in changes:
            self._instruction_pub.publish(String(data=self._settings.instruction))
        self.get_logger().info("parameters changed: " + ", ".join(f"{k}={v!r}" for k, v in changes.items()))

    @property
    def settings(self):
        with self._settings_lock:
            return self._settings

    # --- inputs --------------------------------------------------------------------------------
    def _subscribe(self, msg_type, topic: str, input_name: str, handler, qos, group, raw: bool = False) -> None:
        """Subscribe to serialized messages and deserialize them here: a malformed message (e.g. a
        string that is not UTF-8) must be reported, not raise inside the executor and stop it.
        With ``raw`` the handler also gets the serialized bytes."""

        def callback(data: bytes) -> None:
            try:
                msg = deserialize_message(data, msg_type)
            except Exception as error:  # noqa: BLE001 - anything a bad sender can trigger
                self._input_error(input_name, f"undecodable {msg_type.__name__} on {topic}: {error}")
                return
            try:
                if raw:
                    handler(msg, data)
                else:
                    handler(msg)
            except Exception as error:  # noqa: BLE001 - a bug here must not stop the node either
                self._input_error(input_name, f"{type(error).__name__} while handling {topic}: {error}")

        self.create_subscription(msg_type, topic, callback, qos, callback_group=group, raw=True)

    def _input_error(self, input_name: str, reason: str) -> None:
        self._input_errors[input_name] = reason
        self._log("warning", input_name, f"{input_name}: {reason}")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, view: str, msg, compressed: bool) -> None:
        self._decoder.submit(view, (msg, compressed, self._now()))

    def _decode_frame(self, item) -> np.ndarray:
        msg, compressed, _ = item
        max_pixels = self.settings.max_image_pixels
        return compressed_to_rgb(msg, max_pixels) if compressed else self._image_to_rgb(msg, max_pixels)

    def _frame_decoded(self, view: str, item, rgb, error) -> None:
        msg, _, received = item
        if error:
            self._input_error(f"{view} camera", error)
            error = f"{view} camera: {error}"
        else:
            self._input_errors.pop(f"{view} camera", None)
        self._inputs.put(view, rgb, stamp_to_seconds(msg.header.stamp), received, msg.header.stamp, error=error)
        self._camera_frames[view] = msg.header.frame_id

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            positions = joint_positions_from_msg(msg, self.robot.joints)
        except ValueError as error:
            # Several publishers may share /joint_states (e.g. the gripper alone): only an
            # incomplete message that names one of our joints is an error; the others are noted,
            # and named as the cause if no usable joint state arrives.
            if any(name in self.robot.joints for name in msg.name):
                self._input_error("joint_states", f"ignored: {error}")
            else:
                self._inputs.note("joint_states", f"messages there name none of the arm's joints: {error}", self._now())
            gripper = optional_joint_position(msg, self.robot.gripper_joint)
            if gripper is not None:
                self._gripper_position = gripper
            return
        self._input_errors.pop("joint_states", None)
        gripper = optional_joint_position(msg, self.robot.gripper_joint)
        if gripper is not None:
            self._gripper_position = gripper
        self._inputs.put("joint_states", positions, stamp_to_seconds(msg.header.stamp), self._now(),
                         msg.header.stamp)

    def _on_instruction(self, msg: String, serialized: bytes) -> None:
        # The bytes as sent: rclpy's string stops at a NUL and turns invalid UTF-8 into U+FFFD.
        sent = string_message_bytes(serialized)
        try:
            text = clean_instruction(sent if sent is not None else msg.data)
        except ValueError as error:
            self._input_error("instruction", f"ignored: {error}")
            return
        self._input_errors.pop("instruction", None)
        if text != self.settings.instruction:
            # Through the parameter, so `ros2 param get` shows it and it is validated the same way.
            result = self.set_parameters([Parameter("instruction", Parameter.Type.STRING, text)])[0]
            if not result.successful:
                self._input_error("instruction", f"refused: {result.reason}")

    # --- services ------------------------------------------------------------------------------
    def _on_enable_motion(self, request: SetBool.Request, response: SetBool.Response):
        self._motion_enabled = bool(request.data)
        if not self._motion_enabled:
            self._stop_arm()
        response.success = True
        response.message = "motion enabled" if self._motion_enabled else "motion disabled"
        self.get_logger().info(response.message)
        return response

    def _on_reset_episode(self, request: Trigger.Request, response: Trigger.Response):
        self.runner.reset()
        response.success = True
        response.message = "episode reset: pruner history cleared"
        self.get_logger().info(response.message)
        return response

    # --- control loop ------------------------------------------------------------------------
    def _tick(self) -> None:
        if self._in_flight is not None and not self._in_flight.done():
            return  # at most one step in flight
        now = self._now()
        settings = self.settings
        # Due step_period after the last step began, with the period in effect *now*: a rate
        # change (even from a very slow one back to a fast one) applies at once.
        if self._last_step_start is not None and now < self._last_step_start + settings.step_period:
            return
        snapshot, reason = self._inputs.snapshot(now, settings.max_input_age)
        if snapshot is None:
            extra = "; ".join(v for k, v in self._input_errors.items() if v not in reason)
            self._hold(ERROR if self._steps_done else WARN, f"holding: {reason}" + (f"; {extra}" if extra else ""))
            return
        if not settings.instruction:
            self._hold(WARN, "holding: no instruction (set the 'instruction' parameter or publish one)")
            return
        try:
            check_joint_state(snapshot["joint_states"].value, self.robot,
                              velocity_limit(self.robot, settings.max_joint_velocity) * settings.control_period)
        except JointStateOutOfLimits as error:
            self._hold(ERROR, f"holding: {error}")
            return
        self._last_step_start = now
        self._in_flight = self._worker.submit(self._run_step, snapshot, settings, self._motion_enabled)

    def _hold(self, level: int, message: str) -> None:
        if self._commanding:
            self._stop_arm()
        self._set_status(level, message)
        self._log("warning" if level == WARN else "error", "hold", message)

    def _stop_arm(self) -> None:
        """An empty trajectory: the JointTrajectoryController stops and holds position."""
        if not self._motion_enabled and not self._commanding:
            return
        stop = JointTrajectory()
        stop.header.stamp = self.get_clock().now().to_msg()
        stop.joint_names = list(self.robot.joints)
        self._trajectory_pub.publish(stop)
        self._commanding = False

    def _run_step(self, snapshot, settings, motion_enabled: bool) -> None:
        """One step on the worker thread. Nothing raised here may escape: a bad frame, a model
        error or a NaN action means no command, a stop, and diagnostics saying why."""
        try:
            images = {view: snapshot[view].value for view in VIEWS}  # decoded on arrival
            observation = Observation(
                images=images,
                joint_positions=snapshot["joint_states"].value,
                gripper_position=self._gripper_position,
                instruction=settings.instruction,
                stamp=max(item.stamp for item in snapshot.values()),
            )
            result = self.runner.step(observation, settings)
            # Every input's own stamp, unchanged (no float round trip): a frame stamped before the
            # newest input may still have been in flight when this step began, so a replay needs
            # them all. The newest one is the step's time.
            inputs = {name: item.source_stamp or rclpy.time.Time(seconds=item.stamp).to_msg()
                      for name, item in snapshot.items()}
            stamp = inputs[max(snapshot, key=lambda name: snapshot[name].stamp)]
            # The step may have been slow: act only on inputs that are still current, from where
            # the arm is now (see recheck_before_publish).
            latest = self._inputs.get("joint_states")
            try:
                result = recheck_before_publish(
                    result, {name: item.stamp for name, item in snapshot.items()},
                    None if latest is None or latest.error else latest.value,
                    None if latest is None else latest.stamp, self._now(), settings, self.robot)
            except StaleStepError:
                # The step ran and the pruner's history holds it: its stats and mask still go out
                # (a latency budget, a plot or a replay of the bag needs every step), its chunk not.
                self._publish_outputs(result, images, settings, stamp, inputs)
                raise
            self._publish_step(result, images, settings, motion_enabled, stamp, inputs)
        except Exception as error:  # noqa: BLE001 - a failed step must never take the node down
            if isinstance(error, (StaleStepError, JointStateOutOfLimits)):
                message = f"holding: {error}"
            else:
                message = f"step failed, holding: {type(error).__name__}: {error}"
            self._failed_steps += 1
            if motion_enabled:
                self._stop_arm()
            self._set_status(ERROR, message)
            self._log("error", "step", message)

    def _publish_step(self, result: StepResult, images: dict, settings, motion_enabled: bool, stamp,
                      input_stamps: dict) -> None:
        if motion_enabled and self._motion_enabled:
            self._publish_commands(result)
        self._publish_outputs(result, images, settings, stamp, input_stamps)
        self._steps_done += 1
        self._last_result = result
        notes = "; ".join(result.notes)
        self._set_status(WARN if notes else OK, notes or "running", {
            "step": str(result.step_index),
            "latency_ms": f"{result.output.timings.get('total', 0.0):.1f}",
            "kept_tokens": f"{len(result.output.kept_indices)}/{result.output.num_visual_tokens}",
            "motion": "enabled" if self._motion_enabled else "disabled",
        })
        if self.get_parameter("log_steps").value:
            self.get_logger().info(format_stats_line(result.stats_fields()))

    def _publish_outputs(self, result: StepResult, images: dict, settings, stamp, input_stamps: dict) -> None:
        """What a step computed, whether or not its chunk is sent: kept-token mask, stats, overlays."""
        self._publish_mask(result, stamp)
        self._publish_stats(result, stamp, input_stamps)
        if settings.publish_overlays:
            self._publish_overlays(result, images, stamp)

    # --- publishing ----------------------------------------------------------------------------
    def _publish_commands(self, result: StepResult) -> None:
        trajectory = JointTrajectory()
        # A zero stamp tells the controller to start the trajectory on receipt.
        trajectory.joint_names = list(self.robot.joints)
        for seconds, positions in result.trajectory_points():
            point = JointTrajectoryPoint(positions=positions)
            point.time_from_start = rclpy.duration.Duration(seconds=seconds).to_msg()
            trajectory.points.append(point)
        self._trajectory_pub.publish(trajectory)
        self._commanding = True
        if self._gripper_pub is not None:
            gripper = JointTrajectory()
            gripper.joint_names = [self.robot.gripper_joint]
            for seconds, position in result.gripper_points():
                point = JointTrajectoryPoint(positions=[position])
                point.time_from_start = rclpy.duration.Duration(seconds=seconds).to_msg()
                gripper.points.append(point)
            self._gripper_pub.publish(gripper)

    def _publish_mask(self, result: StepResult, stamp) -> None:
        msg = RetainedTokenMask()
        msg.header.stamp = stamp
        for key, value in result.mask_fields().items():
            setattr(msg, key, value)
        self._mask_pub.publish(msg)

    def _publish_stats(self, result: StepResult, stamp, input_stamps: dict) -> None:
        msg = PrunerStats()
        msg.header.stamp = stamp
        for key, value in result.stats_fields().items():
            setattr(msg, key, value)
        names = [name for name in (*VIEWS, "joint_states") if name in input_stamps]
        msg.input_names = names
        msg.input_stamps = [input_stamps[name] for name in names]
        self._stats_pub.publish(msg)

    def _publish_overlays(self, result: StepResult, images: dict, stamp) -> None:
        out = result.output
        kept = np.asarray(out.kept_indices, dtype=np.int64)
        offset = 0
        crop_scale = self._overlay_crop_scale
        for view, (rows, cols) in zip(out.view_names, view_grids(out)):
            publisher = self._overlay_pubs.get(view)
            count = rows * cols
            if publisher is not None:
                local = kept[(kept >= offset) & (kept < offset + count)] - offset
                pruned = len(kept) < out.num_visual_tokens
                overlay = draw_retained_tokens(images[view], rows, cols, local if pruned else None,
                                               crop_scale=crop_scale)
                msg = Image(**rgb_to_image_fields(overlay))
                msg.header.stamp = stamp
                msg.header.frame_id = self._camera_frames.get(view, "")  # the camera image's own frame
                publisher.publish(msg)
            offset += count

    # --- diagnostics -------------------------------------------------------------------------
    def _set_status(self, level: int, message: str, values: dict | None = None) -> None:
        with self._status_lock:
            changed = level != self._status[0]
            self._status = (level, message, values or {})
        if changed:
            self._publish_diagnostics()

    def _publish_diagnostics(self) -> None:
        with self._status_lock:
            level, message, values = self._status
        settings = self.settings
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: policy", message=message,
                                  hardware_id="xarm6")
        pairs = {
            "method": settings.pruner.method if settings.pruner.enabled else "none",
            "keep_ratio": f"{settings.pruner.keep_ratio:g}",
            "motion": "enabled" if self._motion_enabled else "disabled",
            "steps": str(self._steps_done),
            "failed_steps": str(self._failed_steps),
            **values,
            **{f"input_error.{k}": v for k, v in self._input_errors.items()},
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in pairs.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)

    @property
    def status(self) -> tuple[int, str, dict]:
        with self._status_lock:
            return self._status

    def destroy_node(self):
        # Let a running step finish (it holds the model); no new ones start after this.
        self._decoder.close()
        self._worker.shutdown(wait=True, cancel_futures=True)
        return super().destroy_node()


def main(args=None) -> int:
    # One executor thread: every callback here is short (the step runs on its own worker, frames
    # decode on theirs), and rclpy's multi-threaded executor spends its own CPU and GIL on 100 Hz
    # joint states + the 100 Hz tick: docs/bench/node_executor.py measured the step twice as slow
    # beside it on 2 cores (README, "The policy node's executor").
    return spin_node(PolicyNode, args, num_threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
