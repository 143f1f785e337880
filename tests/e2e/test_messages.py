"""What the console says: one-line errors for missing keys, the seed a run drew, what is frozen, and no lines a user
cannot act on."""

import json
import logging
import re
from pathlib import Path

from omegaconf import OmegaConf

from catdog.runs.resume import resume_command
from catdog.training import train
from tests.conftest import TINY, make_flat, run_script, tiny_train_cfg

ROOT = Path(__file__).resolve().parents[2]


def test_predict_without_ckpt_is_one_line(tmp_path):
    out = run_script("predict.py", [], tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 2
    assert "ckpt is required: add ckpt=... to the command (see conf/predict.yaml)" in text
    assert "Traceback" not in text and "MissingMandatoryValue" not in text


def test_training_console_has_no_lines_a_user_cannot_act_on(tmp_path):
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    args = [*TINY, f"data.dir={data}", f"hydra.run.dir={tmp_path / 'run'}", "trainer.log_every_n_steps=50"]
    out = run_script("train.py", args, tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-2000:]
    for noise in ("litlogger", "LeafSpec", "smaller than the logging interval", "Be aware that when using"):
        assert noise not in text, noise
    assert "best checkpoint" in text  # catdog's own lines stay


def test_seed_null_draws_a_seed_logs_and_saves_it(tmp_path, caplog):
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="catdog.validation"):
        train(tiny_train_cfg(data, run, "seed=null"))
    seed = int(re.search(r"seed=null: drew seed (\d+)", caplog.text).group(1))
    assert OmegaConf.load(run / ".hydra" / "config.yaml").seed == seed
    assert json.loads((run / "result.json").read_text())["val/logloss"] is not None
    # Resuming repeats the drawn seed, not seed=null (which would draw another split).
    assert resume_command(run, ["seed=null", "trainer.max_epochs=3"], seed=seed) == (
        f"python train.py seed={seed} trainer.max_epochs=3 hydra.run.dir={run}"
    )


def test_model_summary_counts_the_frozen_base_as_non_trainable(tmp_path, caplog, capsys):
    data = make_flat(tmp_path / "data", per_class=4, test=0)
    cfg = tiny_train_cfg(
        data, tmp_path / "run", "trainer.enable_model_summary=true", "model.finetune.head_epochs=1",
        "model.finetune.blocks=2", "trainer.max_epochs=2",
    )  # fmt: skip
    with caplog.at_level(logging.INFO):
        train(cfg)
    summary = capsys.readouterr().out + caplog.text  # Lightning's summary table (rich in a terminal), before training
    found = re.search(r"Non-trainable params:? +([\d.]+)|([\d.]+) (?:[KMB] +)?Non-trainable params", summary)
    assert float(found.group(1) or found.group(2)) > 0
    assert re.search(r"epoch 0: head only: [\d.]+( K)? of [\d.]+ K parameters trainable", caplog.text)
    assert re.search(r"epoch 1: unfreezing, head \+ last 2 stage\(s\)", caplog.text)
