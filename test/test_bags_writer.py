"""BagWriter: errors for bad outputs, the disk-space reserve, sqlite3 commits, thread safety,
and a bag that stays readable when the disk fills up (simulated, and for real on a tiny tmpfs)."""
import errno
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from vla_pruner_ros.bags import STORAGES, BagWriteError, BagWriter, open_bag
from vla_pruner_ros.bags.writer import RESERVE_NAME

ROOT = Path(__file__).resolve().parents[1]


def payload(index: int, size: int = 64) -> bytes:
    """A std_msgs/String-shaped CDR payload whose bytes say which message it is."""
    body = f"message {index:06d} ".encode().ljust(size - 9, b".")
    return b"\x00\x01\x00\x00" + (len(body) + 1).to_bytes(4, "little") + body + b"\x00"


def read_payloads(path) -> dict[str, list[bytes]]:
    result: dict[str, list[bytes]] = {}
    with open_bag(path) as bag:
        for message in bag.messages():
            result.setdefault(message.topic, []).append(message.data)
    return result


def test_bad_arguments():
    with pytest.raises(ValueError, match="storage must be one of mcap, sqlite3, got 'rosbag1'"):
        BagWriter("x", "rosbag1")
    with pytest.raises(ValueError, match="reserve_bytes must be >= 0"):
        BagWriter("x", reserve_bytes=-1)


def test_existing_output_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "bag"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BagWriteError, match="already exists") as raised:
        BagWriter(out).open()
    assert raised.value.errno == errno.EEXIST
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_parent_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BagWriteError, match="is not a directory"):
        BagWriter(tmp_path / "file" / "bag").open()
    with pytest.raises(BagWriteError, match="'.*file' is not a directory"):
        BagWriter(tmp_path / "file" / "deeper" / "bag").open()


def test_no_room_for_the_reserve_fails_at_open_and_leaves_nothing(tmp_path):
    if not shutil.which("unshare") or not _can_mount():
        pytest.skip("cannot mount a private tmpfs here (needs unshare with user namespaces)")
    mount = tmp_path / "mnt"
    mount.mkdir()
    script = textwrap.dedent(f"""
        import os
        from vla_pruner_ros.bags import BagWriter, BagWriteError
        try:
            BagWriter({str(mount / 'bag')!r}, "sqlite3", reserve_bytes=4 << 20).open()
        except BagWriteError as error:
            print("ERROR", error.errno, os.listdir({str(mount)!r}), error)
    """)
    result = subprocess.run(["unshare", "-Urm", "sh", "-c",
                             f"mount -t tmpfs -o size=1m tmpfs {mount} && exec {sys.executable} -c \"$0\"", script],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith(f"ERROR {errno.ENOSPC} [] "), result.stdout + result.stderr
    assert "not enough free space for the 4.0 MiB kept in reserve" in result.stdout


def test_read_only_directory_is_refused(tmp_path):
    """A directory that cannot be written (read-only mount, or no permission for non-root)."""
    readonly = tmp_path / "ro"
    readonly.mkdir()
    script = textwrap.dedent(f"""
        import sys
        from vla_pruner_ros.bags import BagWriter, BagWriteError
        try:
            BagWriter({str(readonly / 'bag')!r}).open()
        except BagWriteError as error:
            print("ERROR", error.errno, error)
            sys.exit(3)
    """)
    if shutil.which("unshare") and _can_mount():
        command = ["unshare", "-Urm", "sh", "-c",
                   f"mount -t tmpfs -o ro,size=1m tmpfs {readonly} && exec {sys.executable} -c \"$0\"", script]
    elif hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() != 0:
        readonly.chmod(0o500)
        command = [sys.executable, "-c", script]
    else:
        pytest.skip("no way to make an unwritable directory here (root without unshare)")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "cannot create bag directory" in result.stdout
    assert ("Read-only file system" in result.stdout) or ("Permission denied" in result.stdout)


def test_reserve_file_exists_while_open_and_is_gone_after(tmp_path):
    bag = BagWriter(tmp_path / "bag", "mcap", reserve_bytes=1 << 20).open()
    reserve = tmp_path / "bag" / RESERVE_NAME
    assert reserve.stat().st_size == 1 << 20
    bag.add_topic("/chatter", "std_msgs/msg/String")
    bag.write("/chatter", 1, payload(0))
    assert bag.disk_usage() < 1 << 20  # the reserve is not counted as bag data
    bag.close()
    assert not reserve.exists()
    bag.close()  # twice is fine
    with pytest.raises(BagWriteError, match="not open"):
        bag.write("/chatter", 2, payload(1))


def test_topics_must_be_added_once_with_one_type(tmp_path):
    with BagWriter(tmp_path / "bag", "mcap") as bag:
        bag.add_topic("/chatter", "std_msgs/String")
        bag.add_topic("/chatter", "std_msgs/msg/String")  # same: no-op
        with pytest.raises(ValueError, match="was added as std_msgs/msg/String"):
            bag.add_topic("/chatter", "sensor_msgs/msg/Image")
        with pytest.raises(ValueError, match="call add_topic first"):
            bag.write("/other", 1, payload(0))
        assert bag.topics == {"/chatter": "std_msgs/msg/String"}


def test_sqlite_commits_make_messages_durable_before_close(tmp_path):
    bag = BagWriter(tmp_path / "bag", "sqlite3", commit_interval_s=3600, commit_bytes=10 * 64).open()
    bag.add_topic("/chatter", "std_msgs/msg/String")
    for i in range(25):
        bag.write("/chatter", i, payload(i))  # commits after every 10 messages' worth of bytes

    def committed():
        db = sqlite3.connect(f"file:{tmp_path / 'bag' / 'bag.db3'}?mode=ro", uri=True)
        try:
            return db.execute("SELECT count(*) FROM messages").fetchone()[0]
        finally:
            db.close()

    assert committed() == 20
    bag.flush()
    assert committed() == 25
    bag.close()


@pytest.mark.parametrize("storage", STORAGES)
def test_threads_write_every_message_in_order(tmp_path, storage):
    """Opened in this thread, written from four others, closed here (as the recorder does)."""
    with BagWriter(tmp_path / "bag", storage, commit_bytes=4096) as bag:
        topics = [f"/t{i}" for i in range(4)]
        for topic in topics:
            bag.add_topic(topic, "std_msgs/msg/String")

        def produce(topic, offset):
            for i in range(300):
                bag.write(topic, offset + i * 10, payload(i))

        threads = [threading.Thread(target=produce, args=(t, k)) for k, t in enumerate(topics)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    read = read_payloads(tmp_path / "bag")
    assert read == {t: [payload(i) for i in range(300)] for t in topics}


@pytest.mark.parametrize("storage", STORAGES)
def test_simulated_full_disk_closes_a_readable_bag(tmp_path, storage):
    bag = BagWriter(tmp_path / "bag", storage, simulate_disk_full_after=7).open()
    bag.add_topic("/a", "std_msgs/msg/String")
    bag.add_topic("/b", "std_msgs/msg/String")
    with pytest.raises(BagWriteError) as raised:
        for i in range(20):
            bag.write("/a" if i % 2 else "/b", 1000 + i, payload(i))
    error = raised.value
    assert error.errno == errno.ENOSPC
    assert "No space left on device" in str(error) and "readable with the 7 messages" in str(error)
    with pytest.raises(BagWriteError, match="closed after an earlier error"):
        bag.write("/a", 5000, payload(99))
    assert bag.closed and not (tmp_path / "bag" / RESERVE_NAME).exists()
    read = read_payloads(tmp_path / "bag")
    assert read == {"/b": [payload(i) for i in (0, 2, 4, 6)], "/a": [payload(i) for i in (1, 3, 5)]}
    assert sum(bag.counts.values()) == 7


def _can_mount() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


FILL_SCRIPT = textwrap.dedent("""
    import shutil, sys
    from pathlib import Path
    from vla_pruner_ros.bags import BagWriter, BagWriteError
    storage, mount, copy_to = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    bag = BagWriter(mount / "bag", storage, reserve_bytes=3 << 20, commit_bytes=1 << 20).open()
    bag.add_topic("/camera", "std_msgs/msg/String")
    index = 0
    try:
        while True:  # 100 kB messages until the 8 MiB file system is full
            body = index.to_bytes(4, "little") * 25_000
            bag.write("/camera", 10**9 + index, b"\\x00\\x01\\x00\\x00" + body)
            index += 1
    except BagWriteError as error:
        print("FAILED", index, error.errno, sum(bag.counts.values()), error)
    shutil.copytree(mount / "bag", copy_to)
""")


@pytest.mark.parametrize("storage", STORAGES)
def test_real_full_disk_closes_a_readable_bag(tmp_path, storage):
    """An 8 MiB tmpfs in a private mount namespace fills up for real (ENOSPC / SQLITE_FULL)."""
    if not shutil.which("unshare") or not _can_mount():
        pytest.skip("cannot mount a private tmpfs here (needs unshare with user namespaces)")
    mount = tmp_path / "mnt"
    mount.mkdir()
    copy = tmp_path / "copy"
    command = ["unshare", "-Urm", "sh", "-c",
               f"mount -t tmpfs -o size=8m tmpfs {mount} && exec {sys.executable} -c \"$0\" {storage} {mount} {copy}",
               FILL_SCRIPT]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    words = result.stdout.split()
    assert words[0] == "FAILED", result.stdout
    attempted, error_number, kept = int(words[1]), int(words[2]), int(words[3])
    assert error_number == errno.ENOSPC
    assert 20 <= kept <= attempted + 1  # most of the ~50 messages that fit are kept
    with open_bag(copy) as bag:
        assert bag.info.message_count == kept
        indices = [int.from_bytes(m.data[4:8], "little") for m in bag.messages()]
    assert indices == list(range(kept))  # the first `kept` messages, in order, intact
    if storage == "mcap":  # no half-written chunk left in the file: a linear reader gets through too
        assert mcap_records_are_contiguous(copy / "bag.mcap")


def mcap_records_are_contiguous(path) -> bool:
    """Walk the MCAP file record by record (opcode, uint64 length) from the header magic to
    the footer magic, as a reader without the index would."""
    data = Path(path).read_bytes()
    magic = b"\x89MCAP0\r\n"
    if not (data.startswith(magic) and data.endswith(magic)):
        return False
    position = len(magic)
    while position < len(data) - len(magic):
        opcode = data[position]
        length = int.from_bytes(data[position + 1: position + 9], "little")
        if not 0x01 <= opcode <= 0x10:
            return False
        position += 9 + length
    return position == len(data) - len(magic)


def test_recover_an_mcap_file_cut_in_the_middle_of_a_record(tmp_path):
    """A file cut anywhere (here: inside the last chunk) gives back every complete chunk."""
    from vla_pruner_ros.bags import open_bag
    from vla_pruner_ros.bags.recover import recover_bag

    bag = BagWriter(tmp_path / "bag", "mcap", reserve_bytes=0, commit_interval_s=1e-9)
    bag.open()
    bag.add_topic("/chatter", "std_msgs/msg/String")
    for i in range(9):
        bag.write("/chatter", 1000 + i, payload(i))  # commit_interval_s ~0: one chunk per message
    file = tmp_path / "bag" / "bag.mcap"
    nine = file.stat().st_size  # the flush put each chunk into the file at once
    bag.write("/chatter", 1009, payload(9))
    data = file.read_bytes()
    bag._writer.abort()  # as a killed writer leaves it: no summary, no metadata.yaml
    file.write_bytes(data[:(nine + len(data)) // 2])  # cut inside the tenth chunk
    with pytest.raises(Exception):
        open_bag(tmp_path / "bag").__enter__()
    report = recover_bag(tmp_path / "bag")
    assert report.messages == 9 and "incomplete record" in report.note, report
    with open_bag(tmp_path / "bag") as recovered:
        assert [m.data for m in recovered.messages()] == [payload(i) for i in range(9)]
        assert [m.timestamp_ns for m in recovered.messages()] == [1000 + i for i in range(9)]
