import pytest
import torch
from torch import nn

from medgen.errors import MedgenError
from medgen.training import EarlyStopping, load_model, save_model, set_seed


class Tiny(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.fc = nn.Linear(4, width)

    def forward(self, x):
        return self.fc(x)


def test_save_model_rebuilds_the_same_function(tmp_path):
    set_seed(0)
    model = Tiny(3)
    path = save_model(tmp_path / "m.pt", model, {"width": 3}, config={"lr": 0.1}, metrics={"val_auc": 0.5})
    loaded, checkpoint = load_model(path, allowed_prefixes=("tests.",))
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), model(x))
    assert checkpoint["config"] == {"lr": 0.1} and checkpoint["metrics"] == {"val_auc": 0.5}
    assert not loaded.training


def test_load_model_refuses_foreign_classes(tmp_path):
    path = save_model(tmp_path / "m.pt", Tiny(2), {"width": 2}, config={}, metrics={})
    with pytest.raises(MedgenError, match="refusing to import"):
        load_model(path)  # default allows only medgen.* classes
    with pytest.raises(MedgenError, match="not found"):
        load_model(tmp_path / "absent.pt")


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=2, mode="max")
    decisions = [stopper.step(v, e) for e, v in enumerate([0.5, 0.6, 0.6, 0.55])]
    assert decisions == [False, False, False, True]
    assert (stopper.best, stopper.best_epoch) == (0.6, 1)
    low = EarlyStopping(patience=1, mode="min")
    assert [low.step(v, e) for e, v in enumerate([1.0, 0.9, 0.95])] == [False, False, True]


def test_written_files_are_world_readable(tmp_path):
    from medgen.io import write_json

    path = write_json(tmp_path / "m.json", {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o644
