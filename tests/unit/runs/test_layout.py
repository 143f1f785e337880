"""catdog/runs/layout.py: a run folder's configuration record."""

from omegaconf import OmegaConf

from catdog.runs.layout import save_config_record


def test_config_record_replaced_by_an_accepted_run_keeps_the_old_one(tmp_path):
    save_config_record(OmegaConf.create({"trainer": {"max_epochs": 3}}), tmp_path)
    save_config_record(OmegaConf.create({"trainer": {"max_epochs": 3}}), tmp_path)  # same content: one file
    assert [p.name for p in (tmp_path / ".hydra").iterdir()] == ["config.yaml"]
    save_config_record(OmegaConf.create({"trainer": {"max_epochs": 6}}), tmp_path)
    kept = [p.name for p in (tmp_path / ".hydra").iterdir() if p.name != "config.yaml"]
    assert len(kept) == 1 and kept[0].startswith("config.2")
    assert OmegaConf.load(tmp_path / ".hydra" / kept[0]).trainer.max_epochs == 3
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").trainer.max_epochs == 6
