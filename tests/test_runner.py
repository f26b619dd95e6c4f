"""The step runner of the DAGs (dags/runner.py) and the launcher it starts (common/steps.py):
result file, streamed output, one exit-code policy, Java check, Spark settings under spark-submit."""

from __future__ import annotations

import logging
import os
import textwrap

import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException

from common.config import DEFAULT_CONFIG
from dags import runner

STEP_MODULE = textwrap.dedent('''
    import sys
    from common.steps import emit_result

    def main(argv):
        mode = argv[0]
        print("working on", mode, flush=True)
        print("a line on stderr", file=sys.stderr, flush=True)
        if mode == "ok":
            emit_result({"answer": 42, "mode": mode})
            return 0
        if mode == "config":
            from common.config import ConfigError
            raise ConfigError("bad key 'x.y'")
        if mode == "gate":
            from common.registry import GateRejected
            raise GateRejected("karma/2026-11-01 not registered: too weak")
        if mode == "missing":
            raise FileNotFoundError("no model under /nowhere")
        if mode == "argparse":
            import argparse
            argparse.ArgumentParser().parse_args(["--nope"])
        if mode == "crash":
            raise RuntimeError("worker lost")
        return 0  # "silent": success without a result
''')


@pytest.fixture()
def step_env(tmp_path):
    (tmp_path / "steptest_mod.py").write_text(STEP_MODULE)
    env = runner.step_env({})
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    return env


def _run(mode: str, env: dict) -> dict:
    return runner.run_step(runner.python_command("steptest_mod", [mode]), "steptest_mod", env)


def test_the_result_comes_from_the_result_file_and_the_output_goes_to_the_task_log(step_env, caplog):
    with caplog.at_level(logging.INFO, logger="dags.runner"):
        assert _run("ok", step_env) == {"answer": 42, "mode": "ok"}
    logged = [r.getMessage() for r in caplog.records if r.name == "dags.runner"]
    assert "working on ok" in logged
    assert "a line on stderr" in logged


@pytest.mark.parametrize(("mode", "exit_code", "reason"), [
    ("config", 2, "bad input data, arguments or configuration"),
    ("argparse", 2, "bad input data, arguments or configuration"),
    ("gate", 3, "a validation gate refused the output"),
    ("missing", 4, "a model, index or input is missing or corrupt"),
])
def test_failures_a_retry_cannot_fix_fail_the_task_at_once(step_env, mode, exit_code, reason):
    with pytest.raises(AirflowFailException) as info:
        _run(mode, step_env)
    message = str(info.value)
    assert f"(exit {exit_code}, no retry)" in message
    assert reason in message


def test_other_failures_are_retried_and_a_missing_result_is_a_failure(step_env):
    with pytest.raises(runner.StepFailed, match=r"exited with status 1 \(retryable\).*worker lost"):
        _run("crash", step_env)
    with pytest.raises(runner.StepFailed, match="wrote no result"):
        _run("silent", step_env)


def test_a_missing_java_fails_without_retry_saying_so(tmp_path):
    env = {"PATH": str(tmp_path)}  # no java there, and no JAVA_HOME
    with pytest.raises(AirflowFailException, match=r"Java >= 17 is required \(no `java` on PATH and JAVA_HOME unset"):
        runner.check_java(env)
    old = tmp_path / "java"
    old.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    old.chmod(0o755)
    with pytest.raises(AirflowFailException, match="reports 11"):
        runner.check_java(env)
    with pytest.raises(AirflowFailException, match="has no bin/java"):
        runner.check_java({"PATH": "", "JAVA_HOME": str(tmp_path / "nojdk")})


@pytest.mark.spark
@pytest.mark.slow
def test_profile_spark_settings_reach_the_running_application(tmp_path):
    """driver memory (a spark-submit option: the driver JVM is started before any builder runs)
    and spark.conf entries, read back from the running application's conf."""
    from sources.synthetic import generate

    root = tmp_path / "data"
    generate(root, "2026-11-01", 1, n_users=10, n_items=40, events_per_user_day=4.0, seed=1)
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    doc["profiles"]["tiny"] = {"spark": {"driver_memory": "1200m", "conf": {"spark.sql.shuffle.partitions": "3",
                                                                            "spark.executor.memory": "700m"}}}
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(doc))
    result = runner.spark_step("validate", "2026-11-01",
                               {"config": str(config), "profile": "tiny", "data_root": str(root)})
    conf = result["spark_conf"]
    assert conf["spark.driver.memory"] == "1200m"
    assert conf["spark.sql.shuffle.partitions"] == "3"
    assert conf["spark.executor.memory"] == "700m"
    assert conf["spark.master"] == "local[2]"
    assert result["results"]["2026-11-01"]["behavior_events"]["rows_in"] > 0


def test_the_launcher_maps_exceptions_by_class_name_without_importing_them():
    from common.registry import GateRejected, RegistryError
    from common.steps import exit_status

    assert exit_status(GateRejected("x")) == 3
    assert exit_status(RegistryError("x")) == 4
    assert exit_status(KeyError("x")) == 1
