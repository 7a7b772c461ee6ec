"""The downloader against the real streaming servicer: crc refusal, resume, busy gate, limits, errors."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from pathlib import Path

import grpc
import pytest

from agent.install import stream
from agent.install.grpc_fetch import CHANNEL_OPTIONS, MalformedChunk, grpc_fetch, stub_fetch
from agent.install.transfer import RetryPolicy, TransferProgress, download_file
from controller.registry.transfer import DownloadGate
from shared.errors import NotFound, TransferError
from shared.manifest import FileEntry, sha256_file
from shared.pb import agent_pb2, agent_pb2_grpc
from tests.integration.install.blobserver import BlobServicer, serve

FAST_RETRY = RetryPolicy(max_attempts=4, initial_s=0.01, max_s=0.05)


def put(store, tmp_path: Path, size: int) -> FileEntry:
    src = tmp_path / f"src-{size}"
    src.write_bytes(os.urandom(size))
    ref = store.put_file(src)
    return FileEntry("weights.bin", ref.sha256, ref.size)


def test_download_through_stub_and_raw_fetch(store, channel, tmp_path):
    entry = put(store, tmp_path, 3_500_000)
    for i, fetch in enumerate([grpc_fetch(channel), stub_fetch(agent_pb2_grpc.AgentServiceStub(channel))]):
        dest = tmp_path / f"dl{i}"
        seen: list[TransferProgress] = []
        result = download_file(fetch, entry, dest, seen.append, progress_interval_s=0)
        assert result.transferred == entry.size and result.resumed_from == 0
        assert sha256_file(dest / entry.sha256) == entry.sha256
        assert not (dest / f"{entry.sha256}.part").exists()
        assert seen[-1].done == entry.size and seen[-1].total == entry.size


def test_resume_from_partial_file(store, servicer, channel, tmp_path):
    entry = put(store, tmp_path, 2_500_000)
    dest = tmp_path / "dl"
    dest.mkdir()
    blob = store.path(entry.sha256).read_bytes()
    (dest / f"{entry.sha256}.part").write_bytes(blob[:1_234_567])
    result = download_file(grpc_fetch(channel), entry, dest)
    assert result.resumed_from == 1_234_567
    assert servicer.served[-1].offset == 1_234_567
    assert servicer.bytes_sent == entry.size - 1_234_567
    assert sha256_file(dest / entry.sha256) == entry.sha256


def test_corrupted_chunk_is_refused_and_requested_again(store, servicer, channel, tmp_path):
    entry = put(store, tmp_path, 3_000_000)
    damaged = []

    def flip_second_chunk(sha, chunk):
        if chunk.offset > 0 and not damaged:
            damaged.append(chunk.offset)
            bad = bytes([chunk.data[0] ^ 0x01]) + chunk.data[1:]  # crc32 left as it was
            return type(chunk)(offset=chunk.offset, data=bad, total_size=chunk.total_size, crc32=chunk.crc32)
        return chunk

    servicer.tamper = flip_second_chunk
    dest = tmp_path / "dl"
    result = download_file(grpc_fetch(channel), entry, dest, retry=FAST_RETRY)
    assert result.corrupt_chunks == 1 and result.retries == 1
    assert [s.offset for s in servicer.served] == [0, damaged[0]]  # re-requested from the bad chunk
    assert sha256_file(dest / entry.sha256) == entry.sha256  # the damaged bytes were never written


def test_unknown_blob_is_not_found(channel, tmp_path):
    entry = FileEntry("x", "a" * 64, 10)
    with pytest.raises(NotFound, match="no blob"):
        download_file(grpc_fetch(channel), entry, tmp_path / "dl", retry=FAST_RETRY)


def test_offset_beyond_size_is_invalid_argument(store, channel, tmp_path):
    entry = put(store, tmp_path, 1000)
    with pytest.raises(grpc.RpcError) as info:
        list(grpc_fetch(channel)(entry.sha256, 5000, 0))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside blob" in info.value.details()


def test_controller_away_gives_resumable_transfer_error(tmp_path):
    channel = grpc.insecure_channel("127.0.0.1:1")
    entry = FileEntry("x", "b" * 64, 10)
    with pytest.raises(TransferError, match="resumes from there"):
        download_file(grpc_fetch(channel, timeout_s=2), entry, tmp_path / "dl", retry=FAST_RETRY)


def test_busy_gate_refuses_with_retry_hint_and_clients_back_off(store, tmp_path):
    entry = put(store, tmp_path, 1_500_000)
    gate = DownloadGate(slots=1, max_waiting=0, retry_after_s=0.2)
    servicer = BlobServicer(store, gate)
    with serve(servicer) as address:
        channel = grpc.insecure_channel(address)
        fetch = grpc_fetch(channel)
        # A slow download holds the only slot ...
        slow = fetch(entry.sha256, 0, 1_000_000)
        next(iter(slow))
        # ... so another is refused at once with RESOURCE_EXHAUSTED and the server's hint.
        with pytest.raises(grpc.RpcError) as info:
            list(fetch(entry.sha256, 0, 0))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry in 0.2 s" in info.value.details()
        assert ("retry-after-ms", "200") in tuple(info.value.trailing_metadata())
        # The downloader backs off and succeeds once the slot is free.
        threading.Timer(0.3, slow.cancel).start()
        started = time.monotonic()
        result = download_file(fetch, entry, tmp_path / "dl", retry=RetryPolicy(max_attempts=20, initial_s=0.05))
        assert result.retries >= 1 and time.monotonic() - started >= 0.25
        assert gate.refused >= 2 and gate.active == 0
        channel.close()


def test_bandwidth_limit_paces_the_stream(store, channel, tmp_path):
    entry = put(store, tmp_path, 600_000)
    started = time.monotonic()
    download_file(grpc_fetch(channel), entry, tmp_path / "dl", max_bytes_per_s=1_000_000)
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 5, elapsed  # ~0.6 s at 1 MB/s (the last chunk is not waited for)


def test_pre_encoded_chunks_through_add_agent_service(store, tmp_path):
    """wire=True chunks are valid ArtifactChunk messages for both the raw parser and the generated stub."""
    entry = put(store, tmp_path, 2_100_000)
    servicer = BlobServicer(store, wire=True)
    with serve(servicer, wire=True) as address:
        channel = grpc.insecure_channel(address)
        for i, fetch in enumerate([grpc_fetch(channel), stub_fetch(agent_pb2_grpc.AgentServiceStub(channel))]):
            result = download_file(fetch, entry, tmp_path / f"dl{i}")
            assert sha256_file(result.path) == entry.sha256
        stub = agent_pb2_grpc.AgentServiceStub(channel)  # the other methods are still served
        assert stub.Heartbeat(agent_pb2.HeartbeatRequest()).heartbeat_interval_s == 1
        with pytest.raises(grpc.RpcError) as info:
            list(fetch("d" * 64, 0, 0))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        channel.close()
    assert servicer.bytes_sent > 2 * entry.size  # counted as encoded messages (data plus a few header bytes)


def test_a_malformed_message_is_refused_and_the_download_resumes(store, tmp_path, caplog):
    """A message that is not a valid ArtifactChunk ends the stream with a clear, resumable error (not gRPC's bare
    INTERNAL "Exception deserializing response!"); nothing of it is written and the retry completes the file."""
    entry = put(store, tmp_path, 2_500_000)
    servicer = BlobServicer(store, wire=True)
    broken: list[int] = []

    def truncate_second(sha: str, message: bytes) -> bytes:
        if not broken and len(servicer.served) == 1 and servicer.served[0].bytes_sent > 0:
            broken.append(len(message))
            return message[: len(message) // 2]  # cut inside the data field
        return message

    servicer.tamper = truncate_second  # type: ignore[assignment]
    caplog.set_level(logging.INFO)
    with serve(servicer, wire=True) as address:
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        with pytest.raises(MalformedChunk, match=r"malformed ArtifactChunk: .* runs past the end"):
            for _ in grpc_fetch(channel)(entry.sha256, 0, 0):
                pass
        servicer.served.clear()
        broken.clear()
        result = download_file(grpc_fetch(channel), entry, tmp_path / "dl", retry=FAST_RETRY)
        channel.close()
    assert result.retries == 1 and sha256_file(result.path) == entry.sha256
    assert [s.offset for s in servicer.served] == [0, 1 << 20]  # resumed after the one good chunk
    assert "Exception deserializing" not in caplog.text


def test_fetch_keeps_its_channel_alive(store, address, tmp_path):
    """A single-threaded stream (see CHANNEL_OPTIONS) does not hold its channel: the fetch function must."""
    entry = put(store, tmp_path, 1_500_000)
    fetch = grpc_fetch(grpc.insecure_channel(address, options=CHANNEL_OPTIONS))  # no other reference
    result = download_file(fetch, entry, tmp_path / "dl")
    assert sha256_file(result.path) == entry.sha256


@pytest.mark.skipif(stream._sync_file_range is None, reason="sync_file_range is Linux only")
def test_writeback_starts_as_the_file_is_written(store, channel, tmp_path, monkeypatch):
    entry = put(store, tmp_path, 3_000_000)
    calls: list[tuple[int, int, int]] = []
    real = stream._sync_file_range

    def spy(fd: int, offset: int, length: int, flags: int) -> int:
        rc = real(fd, offset, length, flags)
        calls.append((offset, length, rc))
        return rc

    monkeypatch.setattr(stream, "WRITEBACK_BYTES", 500_000)
    monkeypatch.setattr(stream, "_sync_file_range", spy)
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / f"{entry.sha256}.part").write_bytes(store.path(entry.sha256).read_bytes()[:700_000])  # a resume
    result = download_file(grpc_fetch(channel), entry, dest)
    assert sha256_file(result.path) == entry.sha256
    assert calls and all(rc == 0 for _, _, rc in calls), calls  # the kernel accepted every range
    assert calls[0][0] == 700_000  # from where this session started writing
    assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(calls))  # contiguous
