"""Operator commands (hubctl.core.commands): tables of good and bad commands, properties with hypothesis."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubctl.config.site import SiteConfig, parse_config
from hubctl.core.commands import (
    DEFAULT_MODE_TTL_S,
    DamagedStateError,
    OperatorState,
    apply_command,
    dump_state,
    json_depth,
    load_state,
)
from hubctl.core.control import step
from hubctl.core.limits import LocalTime, limits_in_force
from hubctl.core.sharing import SharingKey
from hubctl.core.types import BatteryMode, BatteryOverride, CompanyReading, Params, Snapshot, State

# 2026-05-04 10:00 Europe/Amsterdam (CEST, UTC+2)
NOW = dt.datetime(2026, 5, 4, 8, 0, tzinfo=dt.UTC).timestamp()
TODAY = "2026-05-04"
TOMORROW = "2026-05-05"

CONFIG: dict[str, Any] = {
    "site": {"id": "de-hoek"},
    "park": {"import_limit_kw": 800, "export_limit_kw": 500},
    "companies": [
        {
            "id": "bakery",
            "import_limit_kw": 200,
            "battery": {"capacity_kwh": 200, "max_charge_kw": 100, "max_discharge_kw": 80},
            "pv": {"peak_kw": 150},
        },
        {"id": "cold-store", "battery": {"capacity_kwh": 100, "max_charge_kw": 50, "max_discharge_kw": 50}},
        {"id": "offices"},
    ],
}


def site() -> SiteConfig:
    return parse_config(CONFIG)


CFG = site()


def send(
    key: str, payload: Any, state: OperatorState | None = None, now: float = NOW, *, raw: bool = False
) -> Any:
    body = payload if raw else json.dumps(payload).encode()
    return apply_command(CFG, state or OperatorState(), key, body, now)


# --- accepted -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "payload", "applied"),
    [
        ("import_limit_kw", {"value": 600, "id": "a1"}, 600.0),
        ("import_limit_kw", 650, 650.0),  # a bare number
        ("export_limit_kw", {"value": 0}, 0.0),
        ("import_limit_kw", {"value": 800}, 800.0),  # equal to the contract: allowed
        ("company/bakery/import_limit_kw", {"value": 150.5}, 150.5),
        ("company/offices/export_limit_kw", {"value": 30}, 30.0),  # no own cap: an operator may set one
        ("battery/bakery/reserve_soc_pct", {"value": 40}, 40.0),
        ("battery/bakery/mode", {"value": "hold"}, {"mode": "hold"}),
        (
            "battery/bakery/mode",
            {"value": {"mode": "charge", "power_kw": 100}},
            {"mode": "charge", "power_kw": 100.0},
        ),
        (
            "battery/cold-store/mode",
            {"value": {"mode": "discharge", "power_kw": 20}},
            {"mode": "discharge", "power_kw": 20.0},
        ),
        ("sharing/key", {"value": "equal"}, {"key": "equal", "shares": {}, "order": []}),
        (
            "sharing/key",
            {"value": {"key": "priority", "order": ["offices", "bakery"]}},
            {"key": "priority", "shares": {}, "order": ["offices", "bakery"]},
        ),
        (
            "sharing/key",
            {"value": {"key": "static", "shares": {"bakery": 0.5, "offices": 0.25}}},
            {"key": "static", "shares": {"bakery": 0.5, "offices": 0.25}, "order": []},
        ),
        (
            "schedule",
            {
                "value": {
                    "date": TOMORROW,
                    "windows": [{"start": "16:00", "end": "20:00", "import_limit_kw": 400}],
                }
            },
            {"date": TOMORROW, "windows": [{"start": "16:00", "end": "20:00", "import_limit_kw": 400.0}]},
        ),
    ],
)
def test_accepted_commands_are_applied_and_answered(key: str, payload: Any, applied: Any) -> None:
    out = send(key, payload)
    assert out.reply.ok, out.reply.error
    assert out.changed
    assert out.reply.value == applied
    assert out.reply.error is None
    assert out.reply.key == key
    if isinstance(payload, dict) and "id" in payload:
        assert out.reply.id == payload["id"]
    json.loads(out.reply.to_json())


def test_overrides_reach_the_controller_shape() -> None:
    state = OperatorState()
    for key, payload in [
        ("import_limit_kw", 600),
        ("export_limit_kw", {"value": 300, "ttl_s": 60}),
        ("company/bakery/import_limit_kw", 150),
        ("company/offices/export_limit_kw", 20),
        ("battery/bakery/mode", {"value": {"mode": "charge", "power_kw": 40}}),
        ("battery/cold-store/reserve_soc_pct", 60),
    ]:
        out = send(key, payload, state)
        assert out.reply.ok, out.reply.error
        state = out.state
    ov = state.overrides(NOW + 1)
    assert ov.park_import_kw == 600
    assert ov.park_export_kw == 300
    assert ov.company_import_kw == {"bakery": 150}
    assert ov.company_export_kw == {"offices": 20}
    assert ov.battery == {"bakery": BatteryOverride(BatteryMode.CHARGE, 40)}
    assert ov.reserve_soc_pct == {"cold-store": 60}
    later = state.overrides(NOW + 61)  # the export limit had a ttl of 60 s
    assert later.park_export_kw is None
    assert later.park_import_kw == 600


def test_manual_battery_mode_expires_after_15_minutes_and_auto_clears() -> None:
    out = send("battery/bakery/mode", {"value": "hold"})
    assert out.reply.expires_at == NOW + DEFAULT_MODE_TTL_S
    assert out.state.overrides(NOW + DEFAULT_MODE_TTL_S - 1).battery
    assert not out.state.overrides(NOW + DEFAULT_MODE_TTL_S).battery
    short = send("battery/bakery/mode", {"value": "hold", "ttl_s": 30})
    assert not short.state.overrides(NOW + 30).battery
    auto = send("battery/bakery/mode", {"value": "auto"}, out.state)
    assert auto.reply.ok
    assert not auto.state.overrides(NOW).battery


def test_null_clears_a_setting() -> None:
    state = send("import_limit_kw", 500).state
    out = send("import_limit_kw", {"value": None, "id": "c"}, state)
    assert out.reply.ok
    assert out.reply.value is None
    assert out.state.overrides(NOW).park_import_kw is None


def test_operator_limit_only_lowers_in_the_controller() -> None:
    out = send("import_limit_kw", 600)
    params = Params.from_config(CFG)
    readings = (
        CompanyReading(100.0, 0.0, 0.0, 50.0),
        CompanyReading(50.0, None, 0.0, 50.0),
        CompanyReading(10.0),
    )
    decision, _ = step(Snapshot(NOW, readings, out.state.overrides(NOW)), State.initial(params), params)
    assert decision.park_limits.import_kw == 600
    assert decision.park_limits.import_source == "operator"


def test_schedule_replaces_that_days_operator_schedule_and_only_lowers() -> None:
    first = send(
        "schedule",
        {
            "value": {
                "date": TOMORROW,
                "windows": [{"start": "06:00", "end": "09:00", "import_limit_kw": 300}],
            }
        },
    )
    second = send(
        "schedule",
        {
            "value": {
                "date": TOMORROW,
                "windows": [{"start": "16:00", "end": "20:00", "import_limit_kw": 400}],
            }
        },
        first.state,
    )
    scheds = second.state.schedules(NOW)
    assert list(scheds) == [dt.date(2026, 5, 5)]
    assert [w.start for w in scheds[dt.date(2026, 5, 5)].windows] == ["16:00"]
    caps = second.state.park_caps(CFG.park, NOW)
    day = dt.date(2026, 5, 5)
    evening = limits_in_force(caps, LocalTime(day, 17 * 3600))
    morning = limits_in_force(caps, LocalTime(day, 7 * 3600))
    assert (evening.import_kw, evening.import_source) == (400, f"schedule {day} 16:00-20:00")
    assert (morning.import_kw, morning.import_source) == (800, "contract")
    clock = second.state.limit_clock(CFG, NOW)
    park, _ = clock.at(dt.datetime(2026, 5, 5, 15, 30, tzinfo=dt.UTC).timestamp())  # 17:30 local
    assert park.import_kw == 400
    cleared = send("schedule", {"value": {"date": TOMORROW, "windows": []}}, second.state)
    assert cleared.reply.ok
    assert cleared.state.schedules(NOW) == {}
    # ends after its date
    assert second.state.schedules(dt.datetime(2026, 5, 5, 22, 1, tzinfo=dt.UTC).timestamp()) == {}


def test_operator_schedule_is_merged_with_a_configured_one() -> None:
    data = json.loads(json.dumps(CONFIG))
    data["park"]["schedules"] = [
        {"date": TOMORROW, "windows": [{"start": "17:00", "end": "18:00", "import_limit_kw": 200}]}
    ]
    cfg = parse_config(data)
    out = apply_command(
        cfg,
        OperatorState(),
        "schedule",
        json.dumps(
            {
                "value": {
                    "date": TOMORROW,
                    "windows": [{"start": "16:00", "end": "20:00", "import_limit_kw": 400}],
                }
            }
        ).encode(),
        NOW,
    )
    caps = out.state.park_caps(cfg.park, NOW)
    assert (
        limits_in_force(caps, LocalTime(dt.date(2026, 5, 5), 17.5 * 3600)).import_kw == 200
    )  # the lower holds
    assert limits_in_force(caps, LocalTime(dt.date(2026, 5, 5), 19 * 3600)).import_kw == 400


def test_sharing_key_in_force() -> None:
    out = send("sharing/key", {"value": {"key": "priority", "order": ["bakery"]}})
    rule = out.state.sharing(NOW)
    assert rule is not None
    assert rule.key is SharingKey.PRIORITY
    assert tuple(rule.order) == ("bakery",)


def test_get_state_is_always_answered() -> None:
    out = apply_command(CFG, OperatorState(), "get/state", b'{"id": "g"}', NOW)
    assert out.reply.ok
    assert out.reply.id == "g"
    assert not out.changed
    assert apply_command(CFG, OperatorState(), "get/state", b"\xff", NOW).reply.ok


# --- rejected -----------------------------------------------------------------------------------------------


def _sched(windows: list[dict[str, Any]]) -> bytes:
    return json.dumps({"value": {"date": TOMORROW, "windows": windows}}).encode()


BAD: list[tuple[str, bytes, str]] = [
    ("import_limit_kw", b"{", "not valid JSON"),
    ("import_limit_kw", b"", "empty"),
    ("import_limit_kw", b"\xff\xfe", "not UTF-8"),
    ("import_limit_kw", b"NaN", "not a number"),
    ("import_limit_kw", b'{"value": Infinity}', "not a number"),
    ("import_limit_kw", b'{"value": 1e400}', "finite"),
    ("import_limit_kw", b'"600"', "must be a JSON object or a bare number"),
    ("import_limit_kw", b'{"value": "600"}', "must be a number"),
    ("import_limit_kw", b'{"value": true}', "must be a number"),
    ("import_limit_kw", b'{"value": -1}', ">= 0"),
    ("import_limit_kw", b'{"value": 900}', "never raise"),
    ("company/bakery/import_limit_kw", b'{"value": 201}', "never raise"),
    ("import_limit_kw", b'{"val": 600}', "unknown field"),
    ("import_limit_kw", b'{"id": "x"}', 'no "value"'),
    ("import_limit_kw", b'{"value": 600, "id": 5}', "id must be a string"),
    ("import_limit_kw", b'{"value": 600, "ttl_s": 0}', "ttl_s must be more than 0"),
    ("import_limit_kw", b'{"value": 600, "ttl_s": "1"}', "ttl_s must be a number"),
    ("import_limit_kw", b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ("import_limit_kw", b"1" * 20000, "bytes"),
    ("peak_limit_kw", b'{"value": 1}', "unknown key"),
    ("company/nobody/import_limit_kw", b'{"value": 1}', "unknown company 'nobody'"),
    ("company/bakery/peak_kw", b'{"value": 1}', "unknown key"),
    ("battery/offices/mode", b'{"value": "hold"}', "has no battery"),
    ("battery/nobody/mode", b'{"value": "hold"}', "unknown company"),
    ("battery/bakery/mode", b'{"value": "boost"}', "mode must be one of"),
    ("battery/bakery/mode", b'{"value": "charge"}', "needs power_kw"),
    ("battery/bakery/mode", b'{"value": {"mode": "charge", "power_kw": 101}}', "at most 100"),
    ("battery/bakery/mode", b'{"value": {"mode": "discharge", "power_kw": 0}}', "more than 0"),
    ("battery/bakery/mode", b'{"value": {"mode": "hold", "power_kw": 5}}', "takes no power_kw"),
    ("battery/bakery/mode", b'{"value": null}', "cannot be null"),
    ("battery/bakery/mode", b'{"value": "hold", "ttl_s": 100000}', "at most 86400"),
    ("battery/bakery/mode", b"5", "must be a JSON object"),
    ("battery/bakery/reserve_soc_pct", b'{"value": 99}', "within 5..95"),
    ("sharing/key", b'{"value": "fair"}', "key"),
    ("sharing/key", b'{"value": {"key": "static"}}', "needs shares"),
    (
        "sharing/key",
        b'{"value": {"key": "static", "shares": {"bakery": 0.8, "offices": 0.5}}}',
        "more than 1",
    ),
    ("sharing/key", b'{"value": {"key": "priority", "order": ["nobody"]}}', "unknown company"),
    ("sharing/key", b'{"value": {"key": "equal", "interval_s": 60}}', "unknown field"),
    ("schedule", b'{"value": {"date": "2026-05-03", "windows": []}}', "has passed"),
    ("schedule", b'{"value": {"date": "2026-06-30", "windows": []}}', "days ahead"),
    ("schedule", b'{"value": {"date": "05-05-2026", "windows": []}}', "not a date"),
    ("schedule", b'{"value": {"date": "2026-05-05"}}', "windows"),
    (
        "schedule",
        _sched([{"start": "25:00", "end": "26:00", "import_limit_kw": 1}]),
        "windows.0.start",
    ),
    (
        "schedule",
        b'{"value": {"date": "2026-05-05", "windows": [{"start": "16:00", "end": "20:00"}]}}',
        "must name",
    ),
    (
        "schedule",
        _sched([{"start": "16:00", "end": "20:00", "import_limit_kw": 900}]),
        "never raise",
    ),
    ("schedule", b'{"value": {"date": "2026-05-05", "windows": []}, "ttl_s": 60}', "no ttl_s"),
    ("import_limit_kw", json.dumps({"value": 600, "ts": NOW - 120}).encode(), "expired"),
    ("battery/bakery/mode", json.dumps({"value": "hold", "ts": NOW - 20, "ttl_s": 10}).encode(), "expired"),
]


@pytest.mark.parametrize(("key", "payload", "reason"), BAD)
def test_bad_commands_are_rejected_with_a_reason_and_change_nothing(
    key: str, payload: bytes, reason: str
) -> None:
    before = send("import_limit_kw", 700).state
    out = apply_command(CFG, before, key, payload, NOW)
    assert not out.reply.ok
    assert not out.changed
    assert out.state is before
    assert out.reply.error is not None
    assert reason in out.reply.error, out.reply.error
    assert out.reply.error[0].islower() or out.reply.error[0].isupper()
    json.loads(out.reply.to_json())


def test_retained_commands_are_refused() -> None:
    out = apply_command(CFG, OperatorState(), "import_limit_kw", b"600", NOW, retained=True)
    assert not out.reply.ok
    assert "retained" in (out.reply.error or "")


def test_rejected_reply_keeps_the_id_when_it_can_be_read() -> None:
    out = send("import_limit_kw", {"value": 900, "id": "req-7"})
    assert out.reply.id == "req-7"


# --- persistence --------------------------------------------------------------------------------------------


def test_state_round_trip_drops_expired_and_invalid() -> None:
    state = OperatorState()
    for key, payload in [
        ("import_limit_kw", {"value": 600, "id": "p"}),
        ("battery/bakery/mode", {"value": "hold"}),
        ("battery/cold-store/mode", {"value": "hold", "ttl_s": 3600}),
        (
            "schedule",
            {
                "value": {
                    "date": TOMORROW,
                    "windows": [{"start": "16:00", "end": "20:00", "import_limit_kw": 400}],
                }
            },
        ),
        ("sharing/key", {"value": "equal"}),
        ("company/bakery/import_limit_kw", 150),
    ]:
        state = send(key, payload, state).state
    text = dump_state(state)
    restored, dropped = load_state(text, CFG, NOW + 1)
    assert restored == state
    assert dropped == []
    later, dropped = load_state(text, CFG, NOW + DEFAULT_MODE_TTL_S + 1)
    assert "battery/bakery/mode" not in later.settings
    assert "battery/cold-store/mode" in later.settings
    assert dropped == ["battery/bakery/mode: expired"]
    # the bakery's contracted cap was lowered below the operator's limit: the setting is dropped
    data = json.loads(json.dumps(CONFIG))
    data["companies"][0]["import_limit_kw"] = 100
    data["companies"].pop(1)
    other, dropped = load_state(text, parse_config(data), NOW + 1)
    assert "company/bakery/import_limit_kw" not in other.settings
    assert "battery/cold-store/mode" not in other.settings
    assert len(dropped) == 2
    # a file that is not a state file is damaged: the shell moves it aside (test_operator_faults.py)
    for damaged, why in [
        ("{", "not valid JSON"),
        ('{"version": 99}', "not version 1"),
        ('{"version": 1, "settings": {}}', "settings is not a list"),
        ("[" * 5000 + "]" * 5000, "nested more than 16"),
        ('{"version": 1, "settings": [Infinity]}', "NaN or Infinity"),
    ]:
        with pytest.raises(DamagedStateError, match=why):
            load_state(damaged, CFG, NOW)


def test_a_payload_nested_deep_is_refused_before_it_is_parsed() -> None:
    """Nested about 1,000 deep, json.loads still parsed a value that json.dumps (the reply's
    sentence) could not show: a RecursionError past every handler. The depth is now counted on the
    text first, brackets inside strings not counted."""
    for depth in range(17, 1000, 7):
        for body in (
            b"[" * depth + b"]" * depth,
            b'{"value": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}",
        ):
            out = apply_command(CFG, OperatorState(), "import_limit_kw", body, NOW)
            assert out.reply.error is not None
            assert "nested too deeply" in out.reply.error
    assert json_depth('{"value": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"[["}') == 1
    assert send("import_limit_kw", {"value": 600, "id": "[[[[[[[[[[[[[[[[[[[[[[[[["}).reply.ok


# --- properties ---------------------------------------------------------------------------------------------

KEYS = [
    "import_limit_kw",
    "export_limit_kw",
    "company/bakery/import_limit_kw",
    "company/cold-store/export_limit_kw",
    "company/nobody/import_limit_kw",
    "battery/bakery/mode",
    "battery/bakery/reserve_soc_pct",
    "battery/offices/mode",
    "schedule",
    "sharing/key",
    "unknown",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["auto", "hold", "charge", "discharge", "static", "equal", TOMORROW]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "mode",
                    "power_kw",
                    "key",
                    "shares",
                    "order",
                    "date",
                    "windows",
                    "start",
                    "end",
                    "import_limit_kw",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=8,
)
payloads = (
    st.binary(max_size=64)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.fixed_dictionaries(
        {"value": json_values},
        optional={"id": st.text(max_size=70), "ttl_s": json_values, "ts": st.floats(NOW - 100, NOW + 100)},
    ).map(lambda v: json.dumps(v).encode())
)


def _within_rules(state: OperatorState, cfg: SiteConfig, now: float) -> None:
    ov = state.overrides(now)
    for kw, cap in (
        (ov.park_import_kw, cfg.park.import_limit_kw),
        (ov.park_export_kw, cfg.park.export_limit_kw),
    ):
        assert kw is None or 0 <= kw <= (cap if cap is not None else 1e6)
    companies = {c.id: c for c in cfg.companies}
    for cid, kw in [*ov.company_import_kw.items(), *ov.company_export_kw.items()]:
        assert cid in companies
        assert kw >= 0
    for cid, mode in ov.battery.items():
        bat = companies[cid].battery
        assert bat is not None
        assert mode.mode is not BatteryMode.AUTO
        assert 0 <= mode.power_kw <= max(bat.max_charge_kw, bat.max_discharge_kw)
    for cid, pct in ov.reserve_soc_pct.items():
        bat = companies[cid].battery
        assert bat is not None
        assert bat.min_soc_pct <= pct <= bat.max_soc_pct


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), payloads), min_size=1, max_size=8))
def test_any_sequence_of_commands_keeps_the_rules(commands: list[tuple[str, bytes]]) -> None:
    state = OperatorState()
    for key, body in commands:
        out = apply_command(CFG, state, key, body, NOW)
        assert out.reply.ok == out.changed
        assert (out.reply.error is None) == out.reply.ok
        if not out.reply.ok:
            assert out.state == state.without_expired(NOW)
        json.loads(out.reply.to_json())
        state = out.state
        _within_rules(state, CFG, NOW)
    restored, dropped = load_state(dump_state(state), CFG, NOW)
    assert restored == state
    assert dropped == []
