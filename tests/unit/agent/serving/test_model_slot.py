"""Atomic model swap: in-flight leases keep the old model until they finish; new leases get the new one."""

from __future__ import annotations

import pytest

from agent.runtime import GenParams, Prompt
from agent.serving.errors import NoModelLoaded
from agent.serving.model_slot import ModelSlot

CHAT = Prompt.chat([{"role": "user", "content": "hello"}])


def test_swap_waits_for_in_flight_requests_before_closing(load_model, serving_model_dir) -> None:
    old = load_model("ort-genai", serving_model_dir, model_id="tiny")
    new = load_model("ort-genai", serving_model_dir, model_id="tiny")
    slot = ModelSlot(old, "1")
    lease = slot.lease()
    previous = slot.swap(new, "2")
    assert previous is not None and previous.model is old
    # the request in flight still works on the old model
    assert not old.closed
    assert lease.model.generate_text(CHAT, GenParams(max_new_tokens=4)) is not None
    # new requests go to the new model
    with slot.lease() as fresh:
        assert fresh.model is new and fresh.version == "2"
    lease.release()
    assert previous.closed.wait(5)
    assert old.closed and not new.closed
    lease.release()  # idempotent
    assert previous.refs == 0


def test_swap_with_no_requests_closes_at_once_and_wait_blocks(load_model, serving_model_dir) -> None:
    old = load_model("ort-genai", serving_model_dir)
    slot = ModelSlot(old, "1")
    slot.swap(load_model("ort-genai", serving_model_dir), "2", wait_s=5)
    assert old.closed


def test_empty_slot_refuses_with_503_error() -> None:
    slot = ModelSlot()
    with pytest.raises(NoModelLoaded, match="no model is loaded"):
        slot.lease()
    assert not slot.loaded


def test_clear_stops_serving(load_model, serving_model_dir) -> None:
    model = load_model("ort-genai", serving_model_dir)
    slot = ModelSlot(model)
    slot.clear(wait_s=5)
    assert model.closed
    with pytest.raises(NoModelLoaded):
        slot.lease()
