import copy

import pandas as pd
import pytest

from shared.pipeline import JoinSpec, PipelineConfigError, TrainingConfig
from local_emulator import covid_reference as covid_model
from trainer_container.join import JoinError, join_datasets


def test_covid_join_has_2119_rows_and_only_the_selected_columns(covid_spec, covid_paths):
    table = join_datasets(covid_spec, covid_paths)
    assert len(table) == 2119
    assert list(table.columns) == [c for cols in covid_model.FEATURES.values() for c in cols]
    assert covid_spec.feature_columns == tuple(c for c in table.columns if c != covid_model.TARGET)
    assert len(covid_spec.feature_columns) == 10
    assert not set(covid_model.RAW_JOIN_KEYS.values()) & set(table.columns)


def test_inner_join_keeps_only_rows_present_everywhere(tmp_path):
    pd.DataFrame({"k": ["a", "b", "c"], "x": [1, 2, 3], "t": [0, 1, 0]}).to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame({"key2": ["c", "a", "z"], "y": [30, 10, 99]}).to_csv(tmp_path / "two.csv", index=False)
    spec = JoinSpec.from_dict({"datasets": [{"name": "one", "join_key": "k", "columns": ["x", "t"]},
                                            {"name": "two", "join_key": "key2", "columns": ["y"]}],
                               "target": "t"})
    table = join_datasets(spec, {"one": tmp_path / "one.csv", "two": tmp_path / "two.csv"})
    assert table.to_dict("list") == {"x": [1.0, 3.0], "t": [0.0, 0.0], "y": [10.0, 30.0]}


def test_missing_join_column_fails_naming_it(covid_paths):
    spec_dict = covid_model.covid_join_spec()
    spec_dict["datasets"][1]["columns"].append("blood_group")
    with pytest.raises(JoinError, match="dataset cowin has no column blood_group"):
        join_datasets(JoinSpec.from_dict(spec_dict), covid_paths)


def test_non_numeric_feature_fails_without_quoting_values(covid_paths):
    spec_dict = covid_model.covid_join_spec()
    spec_dict["datasets"][1]["columns"].append("beneficiary_name")
    with pytest.raises(JoinError) as error:
        join_datasets(JoinSpec.from_dict(spec_dict), covid_paths)
    names = pd.read_csv(covid_paths["cowin"], usecols=["beneficiary_name"])["beneficiary_name"].astype(str)
    assert "beneficiary_name" in str(error.value) and not any(name in str(error.value) for name in names)


def test_duplicate_join_keys_are_refused(tmp_path):
    pd.DataFrame({"k": ["a", "a"], "x": [1, 2], "t": [0, 1]}).to_csv(tmp_path / "one.csv", index=False)
    spec = JoinSpec.from_dict({"datasets": [{"name": "one", "join_key": "k", "columns": ["x", "t"]}], "target": "t"})
    with pytest.raises(JoinError, match="join key k of dataset one is not unique"):
        join_datasets(spec, {"one": tmp_path / "one.csv"})


def test_duplicate_keys_of_a_later_dataset_are_refused_even_when_nothing_matches_them(tmp_path):
    pd.DataFrame({"k": ["a", "b"], "x": [1, 2], "t": [0, 1]}).to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame({"id": ["a", "b", "c", "c"], "y": [1, 2, 3, 4]}).to_csv(tmp_path / "two.csv", index=False)
    spec = JoinSpec.from_dict({"datasets": [{"name": "one", "join_key": "k", "columns": ["x", "t"]},
                                            {"name": "two", "join_key": "id", "columns": ["y"]}], "target": "t"})
    with pytest.raises(JoinError, match="join key id of dataset two is not unique"):
        join_datasets(spec, {"one": tmp_path / "one.csv", "two": tmp_path / "two.csv"})


def test_a_non_numeric_value_is_reported_by_its_own_column_wherever_it_stands(tmp_path):
    """The reader reports the column by position: the message must name the right one when the
    key comes last and an unselected text column sits between the selected ones."""
    (tmp_path / "one.csv").write_text("k,x,t\na,1,0\nb,2,1\n")
    (tmp_path / "two.csv").write_text("y,note,z,id\n1,free text,2,a\n3,more,SECRET-4711,b\n")
    spec = JoinSpec.from_dict({"datasets": [{"name": "one", "join_key": "k", "columns": ["x", "t"]},
                                            {"name": "two", "join_key": "id", "columns": ["y", "z"]}], "target": "t"})
    with pytest.raises(JoinError, match="^column z of dataset two has missing or non-numeric values$") as error:
        join_datasets(spec, {"one": tmp_path / "one.csv", "two": tmp_path / "two.csv"})
    assert "SECRET" not in str(error.value)


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["datasets"][0]["columns"].append("age"), "selected from both"),
    (lambda s: s["datasets"][0].update(join_key="a_test_ct_value"), "cannot be a selected column"),
    (lambda s: s.update(target="pname"), "not a selected column"),
    (lambda s: s.update(sql="SELECT 1"), "unknown field"),
    (lambda s: s["datasets"][0]["columns"].append("x; DROP TABLE"), "plain column"),
])
def test_bad_join_specs_are_refused(mutate, message):
    spec = copy.deepcopy(covid_model.covid_join_spec())
    mutate(spec)
    with pytest.raises(PipelineConfigError, match=message):
        JoinSpec.from_dict(spec)


@pytest.mark.parametrize("override, message", [
    ({"loss": "custom_python"}, "loss must be one of"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of"),
    ({"metrics": ["accuracy", "eval('x')"]}, "metrics must be"),
    ({"epochs": 2.5}, "epochs must be an integer"),
    ({"learning_rate": -1}, "learning_rate must be in"),
    ({"epsilon": float("inf")}, "epsilon must be a number"),
    ({"batch_size": True}, "batch_size must be an integer"),
])
def test_bad_training_configs_are_refused(override, message):
    with pytest.raises(PipelineConfigError, match=message):
        TrainingConfig.from_dict(covid_model.covid_training_config(**override))


def test_unknown_training_field_is_refused():
    config = covid_model.covid_training_config()
    config["callback"] = "os.system"
    with pytest.raises(PipelineConfigError, match="unknown field"):
        TrainingConfig.from_dict(config)


def test_a_config_carrying_the_validation_split_is_refused():
    """The split is a term of the signed contract (evaluation.validation_split), not the TDC's choice."""
    with pytest.raises(PipelineConfigError, match="validation_split is a term of the contract"):
        TrainingConfig.from_dict(covid_model.covid_training_config(validation_split=0.2))
