"""common/config.py: the merged config is validated on load (the `local` profile is the schema),
and the schema stays in step with the settings dataclasses that read each section."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import yaml

from common.config import (
    DEFAULT_CONFIG,
    NULLABLE_TYPES,
    OPTIONAL_KEYS,
    ConfigError,
    config_schema,
    load_config,
    validate_config,
)

BASE = """\
profiles:
  local:
    data_root: d
    spark:
      master: local[2]
      driver_memory: 2g         # JVM heap of the driver
      conf: {spark.ui.enabled: "false"}
    karma:
      base_model: null
      batch_size: 16
      learning_rate: 0.0005
      variant: act+gen+rec
    aigq:
      eval:
        ks: [10, 30]
"""


def _conf(tmp_path, extra: str = "") -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(BASE + extra)
    return str(path)


# --- the repository's config -------------------------------------------------------------------
def test_every_profile_of_the_repository_config_loads():
    profiles = yaml.safe_load(DEFAULT_CONFIG.read_text())["profiles"]
    assert {"local", "cluster"} <= set(profiles)
    for name in profiles:
        cfg = load_config(profile=name, environ={})
        assert cfg["profile"] == name
        validate_config(cfg)  # the merged result passes the public check too


def test_every_null_default_declares_its_type():
    schema = config_schema()
    untyped = [p for p, s in schema.items() if s.kind == "value" and s.type is None]
    assert not untyped, f"null defaults without a type: add them to common.config.NULLABLE_TYPES: {untyped}"
    assert set(NULLABLE_TYPES) <= set(schema), "NULLABLE_TYPES names keys the local profile lacks"
    assert set(OPTIONAL_KEYS) <= set(schema)


def _annotation_type(annotation: str) -> tuple[type, bool]:
    """``(type, nullable)`` of a dataclass field annotation string (``int``, ``int | None``, ``list[str]``)."""
    parts = {p.strip() for p in annotation.split("|")}
    nullable = "None" in parts
    (main,) = parts - {"None"}
    return {"int": int, "float": float, "str": str, "bool": bool, "dict": dict}.get(main.split("[")[0], list), nullable


# (module, class, section, keys of the section the class does not take, fields the section omits)
SETTINGS_CLASSES = [
    ("base_lm.pretrain", "BaseLMConfig", "base_lm", set(), set()),
    ("karma_model.config", "KarmaConfig", "karma", {"base_model", "gate", "fusion"}, set()),  # gate: karma_model.release
    ("karma_model.index", "IndexParams", "karma_index", {"large_factory", "large_threshold"}, set()),
    ("karma_model.ranking", "RankingConfig", "karma_ranking", set(), set()),
    ("aigq_model.train_sft", "SFTConfig", "aigq.sft", set(), set()),
    ("aigq_model.generate", "Decoding", "aigq.generate", {"batch_size", "blocklist"}, set()),
    # kind, style and max_history of an IL-GRPO run come from the policy it updates
    ("aigq_model.grpo_trainer", "GRPOConfig", "aigq.grpo", set(), {"kind", "style", "max_history"}),
    ("aigq_model.ctr_model", "CTRConfig", "aigq.ctr", set(), set()),
    ("aigq_model.rewards", "RewardConfig", "aigq.rewards", set(), set()),
    ("export.data", "ExportConfig", "export", set(), set()),
]


@pytest.mark.parametrize("module,cls,section,extra,omitted", SETTINGS_CLASSES,
                         ids=[c[2] for c in SETTINGS_CLASSES])
def test_schema_matches_the_settings_dataclasses(module, cls, section, extra, omitted):
    """Each section lists every field of the dataclass that reads it, with the field's type, so an
    override of any field is accepted and a misspelt one is refused."""
    klass = getattr(importlib.import_module(module), cls)
    schema = config_schema()
    keys = {p[len(section) + 1 :]: s for p, s in schema.items() if p.startswith(section + ".") and "." not in p[len(section) + 1 :]}
    fields = {f.name: f for f in dataclasses.fields(klass)}
    assert set(keys) - extra == set(fields) - omitted, (
        f"{section}: missing from conf/pipeline.yaml {sorted(set(fields) - omitted - set(keys))}; "
        f"not fields of {cls}: {sorted(set(keys) - extra - set(fields))}")
    hints = {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
             for f in fields.values()}
    for name in set(keys) & set(fields):
        expected, nullable = _annotation_type(hints[name])
        setting = keys[name]
        if expected is dict:
            assert setting.kind == "section", name
            continue
        assert (setting.type, setting.nullable) == (expected, nullable), (
            f"{section}.{name}: {cls} says {hints[name]}; the local profile's value {setting.default!r} reads as "
            f"{setting.type_name} (write floats with a decimal point)")


def test_schema_carries_the_comments_for_a_reference():
    schema = config_schema()
    assert schema["data_root"].doc.startswith("relative paths resolve against the repository root")
    # a comment continued on the lines below the key
    assert "the first is the one u2q serves" in schema["aigq.train_policies"].doc
    assert schema["aigq.generate.seed"].type_name == "an integer or null"
    assert schema["spark.conf"].kind == "open"
    assert not schema["export.lookback_days"].required
    assert schema["export.generate.max_new_tokens"].doc.startswith("overrides aigq.generate.max_new_tokens")


# --- errors: unknown keys ---------------------------------------------------------------------
def test_unknown_key_in_a_profile_names_key_file_and_profile(tmp_path):
    conf = _conf(tmp_path, "  big:\n    spark:\n      driver_memroy: 4g\n")
    load_config(conf, environ={})  # the local profile alone is fine
    with pytest.raises(ConfigError) as err:
        load_config(conf, profile="big", environ={})
    assert str(err.value) == (
        f"{conf}, profile 'big': unknown key 'spark.driver_memroy' (did you mean 'spark.driver_memory'?)")


def test_unknown_section_in_a_profile_lists_the_known_keys(tmp_path):
    conf = _conf(tmp_path, "  big:\n    alerts: {a: 1}\n")
    with pytest.raises(ConfigError, match=r"profile 'big': unknown key 'alerts' \(known keys of the top level: "
                                          r"data_root, spark, karma, aigq\)"):
        load_config(conf, profile="big", environ={})


def test_unknown_key_from_the_environment_names_the_variable(tmp_path):
    conf = _conf(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(conf, environ={"PIPELINE__KARMA__BATCH_SIZ": "32"})
    assert str(err.value) == (
        "environment variable PIPELINE__KARMA__BATCH_SIZ: unknown key 'karma.batch_siz' "
        "(did you mean 'karma.batch_size'?)")
    with pytest.raises(ConfigError, match="environment variable PIPELINE__NOPE__X: unknown key 'nope'"):
        load_config(conf, environ={"PIPELINE__NOPE__X": "1"})
    with pytest.raises(ConfigError, match="PIPELINE__SPARK__MASTER__X: 'spark.master' is a string, not a section"):
        load_config(conf, environ={"PIPELINE__SPARK__MASTER__X": "1"})


def test_unknown_key_of_the_repository_config_from_the_environment():
    with pytest.raises(ConfigError, match=r"PIPELINE__AIGQ__GRPO__KIND: unknown key 'aigq.grpo.kind'"):
        load_config(environ={"PIPELINE__AIGQ__GRPO__KIND": "think"})  # comes from the policy, not config
    with pytest.raises(ConfigError, match=r"unknown key 'export.generate.blocklist'"):
        load_config(environ={"PIPELINE__EXPORT__GENERATE__BLOCKLIST": "[x]"})


# --- errors: types ----------------------------------------------------------------------------
def test_wrong_type_in_a_profile(tmp_path):
    conf = _conf(tmp_path, "  big:\n    karma:\n      batch_size: '32'\n")
    with pytest.raises(ConfigError) as err:
        load_config(conf, profile="big", environ={})
    assert str(err.value) == f"{conf}, profile 'big': 'karma.batch_size' must be an integer, got str '32'"
    for bad, message in [
        ("    spark: local\n", "'spark' must be a mapping, got str 'local'"),
        ("    spark:\n", "'spark' must be a mapping, got null"),
        ("    karma: {variant: 3}\n", "'karma.variant' must be a string, got int 3"),
        ("    karma: {batch_size: true}\n", "'karma.batch_size' must be an integer, got bool True"),
        ("    karma: {learning_rate: 1.0e-3, batch_size: null}\n", "'karma.batch_size' must be an integer, got null"),
        ("    aigq: {eval: {ks: [10, '30']}}\n", "'aigq.eval.ks' must be a list of integers, got '30' in [10, '30']"),
    ]:
        conf = _conf(tmp_path, "  big:\n" + bad)
        with pytest.raises(ConfigError) as err:
            load_config(conf, profile="big", environ={})
        assert str(err.value) == f"{conf}, profile 'big': {message}"


def test_wrong_type_from_the_environment(tmp_path):
    conf = _conf(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(conf, environ={"PIPELINE__KARMA__BATCH_SIZE": "big"})
    assert str(err.value) == (
        "environment variable PIPELINE__KARMA__BATCH_SIZE='big': 'karma.batch_size' must be an integer, got str 'big'")
    with pytest.raises(ConfigError, match="PIPELINE__KARMA__LEARNING_RATE='fast': 'karma.learning_rate' must be a number"):
        load_config(conf, environ={"PIPELINE__KARMA__LEARNING_RATE": "fast"})
    with pytest.raises(ConfigError, match="'karma.batch_size' must be an integer, got null"):
        load_config(conf, environ={"PIPELINE__KARMA__BATCH_SIZE": "null"})


def test_valid_overrides_are_typed_by_the_schema(tmp_path):
    conf = _conf(tmp_path, "  big:\n    karma: {learning_rate: 1, base_model: /models/qwen}\n")
    big = load_config(conf, profile="big", environ={})
    assert big["karma"]["learning_rate"] == 1
    assert big["karma"]["base_model"] == "/models/qwen"  # int as a float
    cfg = load_config(conf, environ={
        "PIPELINE__KARMA__LEARNING_RATE": "1e-5",  # YAML reads 1e-5 as text; a float key takes it as a number
        "PIPELINE__KARMA__VARIANT": "123",  # a string key keeps the text
        "PIPELINE__KARMA__BASE_MODEL": "null",  # a nullable key can be unset
        "PIPELINE__SPARK__CONF__SPARK.EXECUTOR.CORES": "2",  # a free-form map takes any key
        "PIPELINE__SPARK__DRIVER_MEMORY": "4g",
    })
    assert cfg["karma"]["learning_rate"] == 1e-5
    assert cfg["karma"]["variant"] == "123"
    assert cfg["karma"]["base_model"] is None
    assert cfg["spark"]["driver_memory"] == "4g"
    assert cfg["spark"]["conf"] == {"spark.ui.enabled": "false", "spark.executor.cores": 2}


def test_repository_overrides_used_by_tests_and_scripts_are_accepted():
    """Keys the test suite, the scripts and the DAG docs set through the environment."""
    env = {
        "PIPELINE__BASE_LM__WARMUP_STEPS": "0", "PIPELINE__BASE_LM__SAVE_STEPS": "2",
        "PIPELINE__KARMA__EVAL_BATCHES": "1", "PIPELINE__KARMA__WARMUP_STEPS": "0",
        "PIPELINE__AIGQ__SFT__EVAL_BATCHES": "1", "PIPELINE__AIGQ__SFT__LEARNING_RATE": "0.0010000000",
        "PIPELINE__AIGQ__EVAL__BASELINES": "[popularity, cooccurrence, own_history+popularity]",
        "PIPELINE__AIGQ__EVAL__SEMANTIC": "false", "PIPELINE__AIGQ__GENERATE__KNOWN_QUERIES": "true",
        "PIPELINE__EXPORT__GENERATE__MAX_NEW_TOKENS": "8", "PIPELINE__RUNTIME__EXPORT_SHARDS": "4",
        "PIPELINE__RUNTIME__TRAINING_POOL": "gpu", "PIPELINE__RUNTIME__DEVICE": "cpu",
        "PIPELINE__SAMPLES__SESSION_ANCHORS": "true", "PIPELINE__DATA_ROOT": "/mnt/lake",
        "PIPELINE__SPARK__MASTER": "spark://127.0.0.1:7077",
    }
    cfg = load_config(profile="cluster", environ=env)
    assert cfg["export"]["generate"]["max_new_tokens"] == 8
    assert cfg["data_root"] == "/mnt/lake"


def test_a_key_given_twice_is_refused(tmp_path):
    conf = _conf(tmp_path, "  big:\n    karma: {batch_size: 8}\n    karma: {batch_size: 4}\n")
    with pytest.raises(ConfigError) as err:
        load_config(conf, environ={})
    assert str(err.value) == f"{conf}: line 18: key 'karma' given twice in one mapping"


def test_validate_config_checks_a_built_dict():
    cfg = load_config(environ={})
    cfg["karma"] = {**cfg["karma"], "lamda_gen": 1.0}
    with pytest.raises(ConfigError, match=r"^config: unknown key 'karma.lamda_gen'"):
        validate_config(cfg)
