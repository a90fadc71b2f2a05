"""Shared pytest set-up: offline, single-threaded torch (CI has 2 cores), tiny real data from fixtures."""
from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # tests/fixtures_data.py


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield


@pytest.fixture(scope="session")
def tiny_dialogues_path(tmp_path_factory):
    from fixtures_data import make_dialogues, write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("corpus") / "tiny.jsonl", make_dialogues(60))


@pytest.fixture(scope="session")
def prepared_workdir(tmp_path_factory, tiny_dialogues_path):
    """(workdir, prepare artifact) for the tiny corpus: small vocabulary and 16-d vectors."""
    from cldg.config import CommonOptions
    from cldg.stages import prepare

    workdir = tmp_path_factory.mktemp("work")
    cfg = prepare.Config(input=tiny_dialogues_path, vector_dim=16, vector_epochs=3, valid_fraction=0.1,
                         test_fraction=0.1, workers=1)
    art = prepare.run(cfg, CommonOptions(workdir=workdir, seed=1))
    return workdir, art


@pytest.fixture(scope="session")
def pretrain_tiny_reference(prepared_workdir):
    """A function that trains the tests' tiny seq2seq reference (16-d, one layer, one epoch, seed 1) on the shared
    prepare artifact into a workdir and returns the workdir."""
    from typer.testing import CliRunner

    from cldg.cli import app

    _, prepared = prepared_workdir

    def pretrain(work: Path) -> Path:
        result = CliRunner().invoke(app, ["pretrain", "--workdir", str(work), "--prepare-dir", str(prepared.path),
                                          "--embedding-dim", "16", "--hidden-size", "16", "--num-layers", "1",
                                          "--batch-size", "16", "--epochs", "1", "--device", "cpu", "--seed", "1"])
        assert result.exit_code == 0, result.output
        return work

    return pretrain


TINY_PIPELINE = """
workdir = "{workdir}"
seed = 3
device = "cpu"

[prepare]
input = "{corpus}"
vector_dim = 16
vector_epochs = 3
valid_fraction = 0.1
test_fraction = 0.1
workers = 1

[train_matcher]
hidden = 16
gru_hidden = 16
cnn_channels = 4
heads = 2
batch_size = 16
max_steps = 30
eval_every = 15
max_valid_pairs = 40

[mine_samples]
matcher = "msn"
k = 2
n_candidates = 8
n_random = 4

[pretrain]
model = "seq2seq"
embedding_dim = 24
hidden_size = 24
num_layers = 1
batch_size = 16
epochs = 4

[contrastive_train]
k = 2
batch_size = 8
epochs = 1

[evaluate]
decoding = "greedy"
max_len = 12
"""


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, tiny_dialogues_path):
    """The whole pipeline (`cldg run`) on the tiny corpus: (workdir, config path, CLI result)."""
    from typer.testing import CliRunner

    from cldg.cli import app

    root = tmp_path_factory.mktemp("pipeline")
    config = root / "tiny.toml"
    config.write_text(TINY_PIPELINE.format(workdir=root / "work", corpus=tiny_dialogues_path))
    result = CliRunner().invoke(app, ["run", str(config)])
    return root / "work", config, result
