"""vla_pruner_ros.bags: type store, reading and describing bags, and the errors for bad bags."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from vla_pruner_ros.bags import (
    STORAGES,
    BagError,
    BagWriter,
    MessageTypeError,
    deserialize,
    describe,
    message_definition,
    normalize_type,
    open_bag,
    own_message_types,
    require_topics,
    serialize,
    typestore,
)
from vla_pruner_ros.bags.types import msg_search_dirs

STORE = typestore()
T0 = 1_700_000_000 * 10**9


def _image(store, index: int, height=8, width=12):
    Image, Header, Time = (store.types[n] for n in
                           ("sensor_msgs/msg/Image", "std_msgs/msg/Header", "builtin_interfaces/msg/Time"))
    pixels = np.arange(height * width * 3, dtype=np.uint8) + np.uint8(index)
    return Image(header=Header(stamp=Time(sec=index, nanosec=7), frame_id="fixed_camera"), height=height,
                 width=width, encoding="rgb8", is_bigendian=0, step=width * 3, data=pixels)


def _joint_state(store, index: int):
    JointState, Header, Time = (store.types[n] for n in
                                ("sensor_msgs/msg/JointState", "std_msgs/msg/Header", "builtin_interfaces/msg/Time"))
    return JointState(header=Header(stamp=Time(sec=index, nanosec=0), frame_id=""),
                      name=[f"joint{i}" for i in range(1, 7)], position=np.linspace(0, 1, 6) * index,
                      velocity=np.zeros(6), effort=np.zeros(0))


def _stats(store, index: int):
    PrunerStats = store.types["vla_pruner_ros/msg/PrunerStats"]
    fields = {name: 0 for name in PrunerStats.__dataclass_fields__ if name != "__msgtype__"}
    fields.update(header=_image(store, index).header, step_index=index, method="vla_pruner", enabled=True,
                  keep_ratio=0.25, smoothing="window", warmup=index < 3, pool_ratio=1.5, flops=1e9 * index,
                  action_source="temporal", shift_reason="", fallback="",
                  input_names=["fixed", "joint_states"], input_stamps=[_image(store, index).header.stamp] * 2)
    return PrunerStats(**fields)


def write_episode(path: Path, storage: str, steps: int = 6) -> dict[str, list[bytes]]:
    """A small bag like a recorded episode; returns the payloads written per topic, in order."""
    written: dict[str, list[bytes]] = {}
    with BagWriter(path, storage, store=STORE) as bag:
        bag.add_topic("/instruction", "std_msgs/msg/String")
        text = serialize(STORE.types["std_msgs/msg/String"](data="pick up the red cube"), store=STORE)
        bag.write("/instruction", T0, text)
        written["/instruction"] = [text]
        for step in range(steps):
            t = T0 + (step + 1) * 100_000_000
            for topic, msg in (("/fixed_camera/color/image_raw", _image(STORE, step)),
                               ("/joint_states", _joint_state(STORE, step)),
                               ("/vla_pruner_policy/stats", _stats(STORE, step))):
                data = serialize(msg, store=STORE)
                bag.write_message(topic, t, msg)
                written.setdefault(topic, []).append(data)
    return written


@pytest.fixture(scope="module", params=STORAGES)
def episode(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "episode"
    return request.param, path, write_episode(path, request.param)


# -- types ------------------------------------------------------------------------------------------
def test_typestore_has_standard_and_own_messages():
    assert own_message_types() == ["vla_pruner_ros/msg/PrunerStats", "vla_pruner_ros/msg/RetainedTokenMask"]
    for msgtype in ("sensor_msgs/msg/Image", "sensor_msgs/msg/JointState", "std_msgs/msg/String",
                    "trajectory_msgs/msg/JointTrajectory", "diagnostic_msgs/msg/DiagnosticArray",
                    *own_message_types()):
        assert msgtype in STORE.fielddefs


@pytest.mark.parametrize("msgtype", ["vla_pruner_ros/msg/PrunerStats", "vla_pruner_ros/msg/RetainedTokenMask",
                                     "sensor_msgs/msg/Image"])
def test_type_hashes_match_the_ros_build(msgtype):
    """The hash a bag stores must be the one rosidl generated, or ros2 bag play rejects it."""
    package, _, name = msgtype.split("/")
    candidates = [d / f"{name}.json" for d in msg_search_dirs(package)]
    generated = next((p for p in candidates if p.is_file()), None)
    if generated is None:
        pytest.skip(f"no rosidl-generated {name}.json (package not built)")
    expected = next(h["hash_string"] for h in json.loads(generated.read_text())["type_hashes"]
                    if h["type_name"] == msgtype)
    text, type_hash = message_definition(STORE, msgtype)
    assert type_hash == expected
    assert text.splitlines()[0].strip()  # a real definition, not empty


def test_normalize_type_and_unknown_types():
    assert normalize_type("std_msgs/String") == "std_msgs/msg/String"
    assert normalize_type("std_msgs/msg/String") == "std_msgs/msg/String"
    with pytest.raises(MessageTypeError, match="package/msg/Name"):
        normalize_type("String")
    with pytest.raises(MessageTypeError, match="no_such_pkg/msg/Thing"):
        message_definition(typestore(), "no_such_pkg/msg/Thing")


def test_serialize_rclpy_and_rosbags_messages_agree():
    std_msgs = pytest.importorskip("std_msgs.msg")
    from_rclpy = serialize(std_msgs.String(data="hello"))
    from_rosbags = serialize(STORE.types["std_msgs/msg/String"](data="hello"), store=STORE)
    assert from_rclpy == from_rosbags
    assert deserialize(from_rclpy, "std_msgs/msg/String", STORE).data == "hello"


# -- reading ----------------------------------------------------------------------------------------
def test_round_trip_describe_and_payloads(episode):
    storage, path, written = episode
    info = describe(path)
    assert info.storage == storage
    assert {t: s.count for t, s in info.topics.items()} == {t: len(p) for t, p in written.items()}
    assert info.topics["/vla_pruner_policy/stats"].msgtype == "vla_pruner_ros/msg/PrunerStats"
    assert info.message_count == sum(len(p) for p in written.values())
    assert info.start_ns == T0 and info.end_ns == T0 + 6 * 100_000_000
    assert info.duration_s == pytest.approx(0.6)
    assert info.size_bytes > 0 and not info.recovered
    # only the bag's own files are left (no reserve file, no journal)
    suffix = {"mcap": ".mcap", "sqlite3": ".db3"}[storage]
    assert sorted(p.name for p in path.iterdir()) == sorted(["metadata.yaml", f"episode{suffix}"])

    with open_bag(path) as bag:
        read: dict[str, list[bytes]] = {}
        stamps = []
        for message in bag.messages():
            read.setdefault(message.topic, []).append(message.data)
            stamps.append(message.timestamp_ns)
        assert read == written  # bit-identical, in order, per topic
        assert stamps == sorted(stamps)
        only_joints = [m.data for m in bag.messages(["/joint_states"])]
        assert only_joints == written["/joint_states"]
        window = list(bag.messages(start_ns=T0 + 200_000_000, stop_ns=T0 + 400_000_000))
        assert {m.timestamp_ns for m in window} == {T0 + 200_000_000, T0 + 300_000_000}


def test_deserialize_gives_the_fields_back(episode):
    _, path, _ = episode
    with open_bag(path) as bag:
        images = [bag.deserialize(m) for m in bag.messages(["/fixed_camera/color/image_raw"])]
        stats = [bag.deserialize(m) for m in bag.messages(["/vla_pruner_policy/stats"])]
    assert [im.header.stamp.sec for im in images] == list(range(6))
    np.testing.assert_array_equal(images[2].data, _image(STORE, 2).data)
    assert (images[2].height, images[2].width, images[2].encoding) == (8, 12, "rgb8")
    assert [s.step_index for s in stats] == list(range(6))
    assert stats[4].method == "vla_pruner" and stats[4].keep_ratio == pytest.approx(0.25)
    assert [s.warmup for s in stats] == [True, True, True, False, False, False]


def test_deserialize_ros_gives_rclpy_messages(episode):
    pytest.importorskip("rclpy")
    from vla_pruner_ros.bags import deserialize_ros

    _, path, _ = episode
    with open_bag(path) as bag:
        message = next(iter(bag.messages(["/joint_states"])))
    joint_state = deserialize_ros(message.data, message.msgtype)
    assert type(joint_state).__module__.startswith("sensor_msgs.msg")
    assert list(joint_state.name) == [f"joint{i}" for i in range(1, 7)]


def test_bag_is_standard_rosbag2_with_definitions(episode):
    """Plain rosbags (like ros2 bag) finds a definition and the right hash for every topic."""
    _, path, _ = episode
    with Reader(path) as reader:
        for connection in reader.connections:
            assert connection.msgdef.data.strip(), connection.topic
            assert connection.digest == STORE.hash_rihs01(connection.msgtype)


def test_reader_uses_the_bags_own_definitions(tmp_path):
    """A bag of a type this machine does not know still decodes (definition taken from the bag)."""
    store = typestore()
    from rosbags.typesys import get_types_from_msg

    store.register(get_types_from_msg("string label\nfloat64[] values\n", "other_pkg/msg/Sample"))
    Sample = store.types["other_pkg/msg/Sample"]
    with BagWriter(tmp_path / "bag", "mcap", store=store) as bag:
        bag.write_message("/sample", T0, Sample(label="x", values=np.array([1.5, 2.5])),
                          msgtype="other_pkg/msg/Sample")
    with open_bag(tmp_path / "bag") as bag:
        sample = bag.deserialize(next(iter(bag.messages())))
    assert sample.label == "x" and list(sample.values) == [1.5, 2.5]


def test_odd_definitions_in_a_bag_do_not_stop_it_opening(tmp_path):
    """A type whose definition embeds a different std_msgs/Header (another distro), and one
    whose definition does not parse: the bag opens, lists both, and says which cannot decode."""
    from rosbags.rosbag2 import Writer

    other_header = "std_msgs/Header header\nint32 x\n" + "=" * 80 + (
        "\nMSG: std_msgs/Header\nuint32 seq\nbuiltin_interfaces/Time stamp\nstring frame_id\n")
    with Writer(tmp_path / "bag", version=9) as writer:
        ok = writer.add_connection("/old", "old_pkg/msg/Stamped", msgdef=other_header, rihs01="RIHS01_" + "1" * 64)
        broken = writer.add_connection("/broken", "old_pkg/msg/Broken", msgdef="this is not [ a msg",
                                       rihs01="RIHS01_" + "2" * 64)
        store = typestore()
        from rosbags.typesys import get_types_from_msg

        store.register(get_types_from_msg("std_msgs/Header header\nint32 x\n", "old_pkg/msg/Stamped"))
        header = STORE.types["std_msgs/msg/Header"](stamp=STORE.types["builtin_interfaces/msg/Time"](sec=3, nanosec=4),
                                                    frame_id="f")
        data = store.serialize_cdr(store.types["old_pkg/msg/Stamped"](header=header, x=7), "old_pkg/msg/Stamped")
        writer.write(ok, T0, bytes(data))
        writer.write(ok, T0 + 1, bytes(data)[:-3])  # cut short
        writer.write(broken, T0 + 2, b"\x00\x01\x00\x00abcd")
    with open_bag(tmp_path / "bag") as bag:
        assert {t: s.msgtype for t, s in bag.info.topics.items()} == {
            "/old": "old_pkg/msg/Stamped", "/broken": "old_pkg/msg/Broken"}
        old, short, bad = list(bag.messages(["/old"])) + list(bag.messages(["/broken"]))
        decoded = bag.deserialize(old)
        assert (decoded.header.stamp.sec, decoded.header.frame_id, decoded.x) == (3, "f", 7)
        with pytest.raises(BagError, match="old_pkg/msg/Stamped message on /old .* cannot be decoded"):
            bag.deserialize(short)
        with pytest.raises(MessageTypeError, match="no definition of old_pkg/msg/Broken"):
            bag.deserialize(bad)


# -- required topics --------------------------------------------------------------------------------
def test_require_topics_lists_what_the_bag_has(episode):
    _, path, _ = episode
    info = describe(path)
    require_topics(info, {"/joint_states": "sensor_msgs/msg/JointState",
                          "/fixed_camera/color/image_raw": ("sensor_msgs/msg/CompressedImage",
                                                            "sensor_msgs/msg/Image")})
    with pytest.raises(BagError) as raised:
        require_topics(info, {"/wrist_camera/color/image_raw": "sensor_msgs/msg/Image",
                              "/joint_states": "sensor_msgs/msg/JointState"})
    text = str(raised.value)
    assert "missing topic /wrist_camera/color/image_raw" in text
    for topic, summary in info.topics.items():  # the listing: every topic with its type and count
        assert topic in text and summary.msgtype in text
    with pytest.raises(BagError, match="topic /instruction has 1 messages; at least 2 needed"):
        require_topics(info, {"/instruction": "std_msgs/msg/String"}, min_messages=2)
    with pytest.raises(BagError, match="topic /joint_states has type sensor_msgs/msg/JointState; expected"):
        with open_bag(path) as bag:
            bag.require({"/joint_states": "std_msgs/msg/String"})
    with open_bag(path) as bag, pytest.raises(BagError, match="no topic /nope"):
        bag.messages(["/nope"])


# -- bad bags -----------------------------------------------------------------------------------------
def _copy(episode, tmp_path) -> tuple[str, Path, Path]:
    storage, path, _ = episode
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    storage_file = next(p for p in copy.iterdir() if p.suffix in (".mcap", ".db3"))
    return storage, copy, storage_file


def test_missing_and_non_bag_paths(tmp_path):
    with pytest.raises(BagError, match="does not exist"):
        open_bag(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="not a rosbag2 directory: it has no metadata.yaml"):
        open_bag(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BagError, match="expected a rosbag2 directory, a .mcap or a .db3 file"):
        describe(tmp_path / "notes.txt")
    (tmp_path / "fake.mcap").write_bytes(b"not an mcap file")
    with pytest.raises(BagError, match="corrupt or truncated"):
        describe(tmp_path / "fake.mcap")
    (tmp_path / "fake.db3").write_bytes(b"not a database" * 100)
    with pytest.raises(BagError, match="corrupt or truncated"):
        describe(tmp_path / "fake.db3")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_storage_file_is_a_clear_error(episode, tmp_path, keep):
    _, copy, storage_file = _copy(episode, tmp_path)
    with open(storage_file, "r+b") as file:
        file.truncate(int(storage_file.stat().st_size * keep))
    with pytest.raises(BagError, match=r"cannot .*bag .*copy.*corrupt or truncated"):
        with open_bag(copy) as bag:
            for _ in bag.messages():
                pass


def test_damaged_metadata_is_a_clear_error(episode, tmp_path):
    _, copy, _ = _copy(episode, tmp_path)
    (copy / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9")
    with pytest.raises(BagError, match="corrupt or truncated"):
        describe(copy)
    (copy / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9}\n")
    with pytest.raises(BagError, match="corrupt or truncated"):
        describe(copy)


def test_sqlite_damage_inside_the_data_is_reported_while_reading(tmp_path):
    path = tmp_path / "bag"
    write_episode(path, "sqlite3", steps=40)
    db = path / "bag.db3"
    with open(db, "r+b") as file:
        file.seek(db.stat().st_size // 2)
        file.write(b"\xff" * 8192)  # overwrite b-tree pages in the middle
    with pytest.raises(BagError, match="corrupt or truncated"):
        with open_bag(path) as bag:
            for _ in bag.messages():
                pass


def test_missing_metadata_reads_the_storage_file(episode, tmp_path):
    """A recorder killed before writing metadata.yaml: the storage file alone is read."""
    _, copy, _ = _copy(episode, tmp_path)
    os.unlink(copy / "metadata.yaml")
    info = describe(copy)
    assert info.recovered
    assert info.message_count == sum(s.count for s in info.topics.values()) == 1 + 3 * 6
    assert "recovered without metadata.yaml" in info.listing()
    with open_bag(copy) as bag:
        assert len(list(bag.messages())) == info.message_count
