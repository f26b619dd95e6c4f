"""common/registry: versions saved whole, gated registration, clear errors on broken versions."""

from __future__ import annotations

import pytest

from common.registry import (
    GateRejected,
    RegistryError,
    commit_version,
    current_path,
    current_version,
    model_dir,
    register,
    stage_version,
)


def _save(root, version, hr):
    tmp = stage_version(root, "m", version)
    (tmp / "weights.bin").write_bytes(b"w" + version.encode())
    return commit_version(tmp, root, "m", version, {"metrics": {"hr@200": hr}})


def _gate(candidate, current):
    failures = []
    if candidate["metrics"]["hr@200"] < 0.1:
        failures.append(f"hr@200 {candidate['metrics']['hr@200']} < popularity 0.1")
    if current and candidate["metrics"]["hr@200"] < 0.9 * current["metrics"]["hr@200"]:
        failures.append("more than 10% below the current version")
    return failures


def test_register_moves_pointer_only_through_the_gate(tmp_path):
    with pytest.raises(RegistryError, match="no registered version"):
        current_path(tmp_path, "m")
    _save(tmp_path, "2026-11-01", 0.30)
    register(tmp_path, "m", "2026-11-01", _gate)
    assert current_version(tmp_path, "m") == "2026-11-01"
    _save(tmp_path, "2026-11-02", 0.05)
    with pytest.raises(GateRejected, match=r"hr@200 0.05 < popularity 0.1"):
        register(tmp_path, "m", "2026-11-02", _gate)
    _save(tmp_path, "2026-11-03", 0.20)
    with pytest.raises(GateRejected, match="below the current version"):
        register(tmp_path, "m", "2026-11-03", _gate)
    assert current_version(tmp_path, "m") == "2026-11-01"  # untouched by the rejections
    assert (current_path(tmp_path, "m") / "weights.bin").read_bytes() == b"w2026-11-01"


def test_rerun_replaces_a_version_and_broken_versions_fail_clearly(tmp_path):
    _save(tmp_path, "v1", 0.3)
    _save(tmp_path, "v1", 0.4)
    names = sorted(p.name for p in model_dir(tmp_path, "m").iterdir())
    assert names == ["v1"]
    register(tmp_path, "m", "v1")
    (model_dir(tmp_path, "m", "v1") / "manifest.json").write_text("{broken")
    with pytest.raises(RegistryError, match="corrupt manifest"):
        current_path(tmp_path, "m")
    (model_dir(tmp_path, "m", "v1") / "_SUCCESS").unlink()
    with pytest.raises(RegistryError, match="not a complete model/index version"):
        current_path(tmp_path, "m")


def test_gate_decisions_say_which_version_serves_a_day_and_why(tmp_path):
    from common.registry import (
        GateRejected,
        commit_version,
        register,
        serving_status,
        serving_version,
        stage_version,
    )

    def version(v: str, hr: float) -> None:
        commit_version(stage_version(tmp_path, "karma", v), tmp_path, "karma", v, {"hr": hr})

    def gate(candidate, current):
        return [] if current is None or candidate["hr"] >= current["hr"] else [f"hr {candidate['hr']} < current"]

    version("2026-11-01", 0.5)
    register(tmp_path, "karma", "2026-11-01", gate=gate)
    version("2026-11-02", 0.4)
    with pytest.raises(GateRejected):
        register(tmp_path, "karma", "2026-11-02", gate=gate)
    refused = serving_status(tmp_path, "karma", "2026-11-02")
    assert refused["version"] == "2026-11-01"
    assert refused["reason"] == "gate refused 2026-11-02: hr 0.4 < current; serving 2026-11-01"
    assert refused["decision"]["registered"] is False
    version("2026-11-03", 0.6)
    register(tmp_path, "karma", "2026-11-03", gate=gate)
    # a later day's model never serves an earlier day (backfills, demo days exported late)
    assert serving_version(tmp_path, "karma", "2026-11-02") == "2026-11-01"
    assert serving_version(tmp_path, "karma", "2026-11-03") == "2026-11-03"
    assert serving_version(tmp_path, "karma") == "2026-11-03"
    assert serving_status(tmp_path, "karma", "2026-11-04")["reason"] == "no candidate gated for 2026-11-04; serving 2026-11-03"
