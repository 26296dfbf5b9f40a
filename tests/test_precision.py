"""`precision: auto` and bf16 on the CPU: the decision rule with made-up CPU flags, what a run
records about it, and bf16 training, checkpointing and resuming like fp32."""
import json

import pytest
import torch

import cnnlab.core.env
from cnnlab.core.env import cpu_info, environment, resolve_precision
from cnnlab.core.errors import CnnlabError
from cnnlab.data.cifar import synthetic_cifar
from cnnlab.models import create_model
from cnnlab.tasks import ClassificationConfig, ClassificationTask
from cnnlab.training.engine import Engine, TrainConfig, load_checkpoint, seed_everything
from interrupt import StopAtEpoch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SAPPHIRE_RAPIDS = ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
COOPER_LAKE = ["avx2", "avx512f", "avx512_bf16"]  # bf16 instructions, no matrix tiles
ZEN3 = ["avx2"]


@pytest.mark.parametrize("precision, device, flags, used", [
    ("auto", CPU, SAPPHIRE_RAPIDS, "bf16"),
    ("auto", CPU, COOPER_LAKE, "fp32"),
    ("auto", CPU, ZEN3, "fp32"),
    ("auto", CPU, [], "fp32"),
    ("auto", CUDA, ZEN3, "bf16"),
    ("auto-cuda", CPU, SAPPHIRE_RAPIDS, "fp32"),
    ("auto-cuda", CUDA, [], "bf16"),
    ("fp32", CPU, SAPPHIRE_RAPIDS, "fp32"),
    ("fp32", CUDA, [], "fp32"),
    ("bf16", CPU, ZEN3, "bf16"),
])
def test_auto_resolves_by_device_and_cpu_flags(precision, device, flags, used):
    got, why = resolve_precision(precision, device, cpu_flags=flags)
    assert got == used
    assert why  # always says why
    if precision == "auto" and device.type == "cpu":
        assert "amx_bf16" in why


def test_unknown_precision_is_a_one_line_error():
    with pytest.raises(CnnlabError, match="precision must be one of auto, auto-cuda, fp32, bf16, got 'fp16'"):
        resolve_precision("fp16", CPU, cpu_flags=[])
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp16")


def test_cpu_info_reads_model_name_and_the_flags_that_matter(tmp_path):
    text = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
            "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n\n"
            "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu\n")
    (tmp_path / "cpuinfo").write_text(text)
    info = cpu_info(tmp_path / "cpuinfo")
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["flags"] == ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f"]  # amx_int8 not recorded
    missing = cpu_info(tmp_path / "absent")  # not Linux: no flags, so auto stays fp32
    assert missing["flags"] == [] and missing["model"]


def test_environment_records_cpu_model_flags_and_precision():
    env = environment(CPU, {"requested": "auto", "used": "fp32", "reason": "why"})
    assert env["cpu_model"] and isinstance(env["cpu_flags"], list)
    assert env["precision"] == {"requested": "auto", "used": "fp32", "reason": "why"}
    assert "precision" not in environment(CPU)


# ---------------------------------------------------------------------------- bf16 training on the CPU
@pytest.fixture(scope="module")
def splits():
    return synthetic_cifar(n_train=600, n_test=100, val_size=100, size=16, seed=0)


def task(splits):
    return ClassificationTask.from_arrays(splits.train_images, splits.train_labels, splits.val_images,
                                          splits.val_labels, ClassificationConfig(), batch_size=25, device="cpu")


def model(seed=0):
    seed_everything(seed)
    return create_model("B", width_multiplier=0.125)  # B: the attention sigmoid runs under autocast too


def config(**changes):
    return TrainConfig(**{"epochs": 3, "batch_size": 25, "lr": 0.2, "device": "cpu", "progress": False, **changes})


def fake_cpu(monkeypatch, flags):
    monkeypatch.setattr(cnnlab.core.env, "cpu_info", lambda *a: {"model": "test CPU", "flags": list(flags)})


def test_auto_on_an_amx_cpu_trains_in_bf16_and_says_so(splits, tmp_path, monkeypatch):
    fake_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    engine = Engine(config(), tmp_path)
    assert engine.autocast_dtype == torch.bfloat16
    result = engine.fit(model(), task(splits))
    # Learning, not only running: the loss falls and validation is far above chance (0.1).
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] - 0.2
    assert result.final["val_acc"] >= 0.3
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["precision"] == {"requested": "auto", "used": "bf16", "reason": "auto on a CPU with amx_bf16"}
    assert env["cpu_model"] == "test CPU"
    assert json.loads((tmp_path / "final.json").read_text())["precision"] == "bf16"
    assert load_checkpoint(tmp_path)["precision"] == "bf16"


def test_auto_without_amx_trains_in_fp32(splits, tmp_path, monkeypatch):
    fake_cpu(monkeypatch, COOPER_LAKE)
    engine = Engine(config(epochs=1), tmp_path)
    assert engine.autocast_dtype is None
    engine.fit(model(), task(splits))
    assert json.loads((tmp_path / "environment.json").read_text())["precision"]["used"] == "fp32"


def test_bf16_resume_after_interruption_gives_the_same_weights(splits, tmp_path):
    cfg = config(precision="bf16", ema=0.9)
    straight = Engine(cfg, tmp_path / "straight").fit(model(), task(splits))
    with pytest.raises(KeyboardInterrupt):
        Engine(cfg, tmp_path / "resumed").fit(model(), StopAtEpoch(task(splits), 2))
    resumed = Engine(cfg, tmp_path / "resumed").fit(model(seed=1), task(splits), resume=True)
    assert resumed.resumed_from_epoch == 2
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.final["val_acc"] == straight.final["val_acc"]


def test_an_auto_run_resumed_on_another_cpu_keeps_its_precision(splits, tmp_path, monkeypatch):
    fake_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    with pytest.raises(KeyboardInterrupt):
        Engine(config(), tmp_path).fit(model(), StopAtEpoch(task(splits), 1))
    fake_cpu(monkeypatch, ZEN3)  # the same folder, continued on a CPU where auto means fp32
    engine = Engine(config(), tmp_path)
    assert engine.precision == "fp32"
    result = engine.fit(model(), task(splits), resume=True)
    assert engine.precision == "bf16" and engine.autocast_dtype == torch.bfloat16
    assert "kept from the checkpoint" in engine.precision_reason
    assert result.final["precision"] == "bf16"
