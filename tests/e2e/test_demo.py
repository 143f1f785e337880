import json

from catdog.data.demo import make_demo_dataset
from catdog.training import train
from tests.conftest import TINY, compose_train, make_flat


def test_demo_recipe_trains_on_a_users_folder_without_writing_into_it(tmp_path):
    mine = make_flat(tmp_path / "mine", per_class=4, test=0)
    before = sorted((p.relative_to(mine), p.read_bytes()) for p in mine.rglob("*") if p.is_file())
    assert make_demo_dataset(mine, per_class=2, test=1) == mine
    cfg = compose_train(["experiment=demo", *TINY, f"data.dir={mine}"], output_dir=tmp_path / "run")
    train(cfg)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["train_images"] < 8  # the user's 8 images
    assert sorted((p.relative_to(mine), p.read_bytes()) for p in mine.rglob("*") if p.is_file()) == before
