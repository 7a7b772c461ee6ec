"""Word lists and phrasings for the smart-building task: a ``base`` set and a ``shifted`` set.

The shifted set keeps the intents and the JSON schema but changes the surface: new room names and
devices, 12-hour clock times, ordinal floors, synonyms and new sentence shapes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Vocab:
    numbered_rooms: tuple[str, ...]
    named_rooms: tuple[str, ...]
    devices: tuple[str, ...]
    prefixes: tuple[str, ...]
    clock: str  # "24h" or "12h"
    floor_style: str  # "number" or "ordinal"
    # intent -> phrasings; placeholders {room} {time} {level} {value} {floor} {device}
    phrasings: dict[str, tuple[str, ...]]
    # how an optional time is attached: "{text}" is the request, "{time}" the spoken time
    time_forms: tuple[str, ...]


BASE = Vocab(
    numbered_rooms=("meeting room", "office", "lab", "conference room", "classroom"),
    named_rooms=("lobby", "kitchen", "server room", "reception", "library", "break room"),
    devices=("projector", "printer", "coffee machine", "air conditioner", "screen", "door sensor"),
    prefixes=("", "", "", "please ", "hey building, "),
    clock="24h",
    floor_style="number",
    phrasings={
        "lights_on": (
            "turn on the lights in {room}",
            "switch on the lights in {room}",
            "lights on in {room}",
            "turn the lights on in {room}",
        ),
        "lights_off": (
            "turn off the lights in {room}",
            "switch off the lights in {room}",
            "lights off in {room}",
            "turn the lights off in {room}",
        ),
        "set_brightness": (
            "set the brightness in {room} to {level}%",
            "dim the lights in {room} to {level}%",
            "set {room} lights to {level} percent",
        ),
        "set_temperature": (
            "set the temperature in {room} to {value} degrees",
            "make {room} {value} degrees",
            "change the thermostat in {room} to {value}",
        ),
        "get_temperature": (
            "what is the temperature in {room}",
            "how warm is {room}",
            "tell me the temperature in {room}",
        ),
        "open_blinds": ("open the blinds in {room}", "raise the blinds in {room}"),
        "close_blinds": ("close the blinds in {room}", "lower the blinds in {room}"),
        "lock_door": ("lock the door of {room}", "lock {room}"),
        "unlock_door": ("unlock the door of {room}", "unlock {room}"),
        "report_fault": (
            "the {device} in {room} is broken",
            "report a fault with the {device} in {room}",
            "the {device} in {room} does not work",
        ),
        "call_elevator": ("call the elevator to floor {floor}", "send the elevator to floor {floor}"),
    },
    time_forms=("{text} at {time}", "at {time} {text}"),
)

SHIFTED = Vocab(
    numbered_rooms=("huddle space", "studio", "workshop", "training room", "suite"),
    named_rooms=("cafeteria", "boardroom", "gym", "mail room", "atrium", "warehouse"),
    devices=("dishwasher", "badge reader", "smart board", "vending machine", "speaker", "heater"),
    prefixes=("", "kindly ", "could you ", "yo, ", "i need you to "),
    clock="12h",
    floor_style="ordinal",
    phrasings={
        "lights_on": (
            "light up {room}",
            "get the lights going in {room}",
            "{room} needs its lights on",
            "illuminate {room}",
        ),
        "lights_off": (
            "kill the lights in {room}",
            "shut the lights off in {room}",
            "{room}: lights out",
            "darken {room}",
        ),
        "set_brightness": (
            "bring the lighting in {room} to {level} pct",
            "{room} brightness {level}",
            "adjust the lamps in {room} to {level} per cent",
        ),
        "set_temperature": (
            "heat {room} to {value}",
            "i want {room} at {value} celsius",
            "{room} thermostat {value}",
        ),
        "get_temperature": (
            "how hot is it in {room}",
            "{room} temperature?",
            "check the climate in {room}",
        ),
        "open_blinds": ("pull up the shades in {room}", "let some light into {room}"),
        "close_blinds": ("draw the shades in {room}", "shut the curtains in {room}"),
        "lock_door": ("secure {room}", "bolt the entrance to {room}"),
        "unlock_door": ("let me into {room}", "release the lock on {room}"),
        "report_fault": (
            "{device} broke down in {room}",
            "there is something wrong with the {device} in {room}",
            "{room} {device} out of order",
        ),
        "call_elevator": ("i need the lift on the {floor} floor", "bring the lift to the {floor} floor"),
    },
    time_forms=("{text} by {time}", "{text} around {time}", "come {time}, {text}"),
)

VOCABS = {"base": BASE, "shifted": SHIFTED}

# Which slots each intent fills, in addition to the optional time.
INTENT_SLOTS: dict[str, tuple[str, ...]] = {
    "lights_on": ("room",),
    "lights_off": ("room",),
    "set_brightness": ("room", "level"),
    "set_temperature": ("room", "value"),
    "get_temperature": ("room",),
    "open_blinds": ("room",),
    "close_blinds": ("room",),
    "lock_door": ("room",),
    "unlock_door": ("room",),
    "report_fault": ("device", "room"),
    "call_elevator": ("floor",),
}
TIMED_INTENTS = frozenset({"lights_on", "lights_off", "open_blinds", "close_blinds", "lock_door", "unlock_door"})
