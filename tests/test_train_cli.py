"""``lungseg train --resume`` as a user meets it: the real command in fresh processes.

A resume test inside one warm Python process once passed while ``lungseg train --resume``
failed for every user (the losses were registered with Keras only because the test had
imported them). Here every run is a new interpreter: the ``lungseg`` console script of this
environment, killed with SIGKILL inside an epoch, or a fresh interpreter that calls the CLI's
``main`` and SIGKILLs itself at a chosen rename of the checkpoint commit.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from segmentation.tf_env import ALBUMENTATIONS_UPDATE_VARIABLE, LOG_LEVEL_VARIABLE, ONEDNN_VARIABLE
from test_train import TINY, _KillAfter, _write_dataset

REPO = Path(__file__).resolve().parents[1]
LUNGSEG = Path(sys.executable).with_name("lungseg")
pytestmark = pytest.mark.slow

# quick.yaml (hybrid BCE + skip-empty Dice: the loss whose class a fresh process could not
# find) shrunk to seconds; deterministic, so two runs give the same weights.
RUN_SET = [*TINY, "train.deterministic=true", "train.tensorboard_images=false",
           "train.epochs=3", "train.steps_per_epoch=12", "train.val_every=3",
           "train.early_stopping_patience=0"]


def _env() -> dict:
    env = dict(os.environ)
    for name in (ONEDNN_VARIABLE, LOG_LEVEL_VARIABLE, ALBUMENTATIONS_UPDATE_VARIABLE):
        env.pop(name, None)  # set by conftest's configure_process; as a user's shell: lungseg chooses
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _train_args(data: Path, out: Path, *extra: str, config: str = "quick.yaml") -> list[str]:
    return ["train", "--config", str(REPO / "configs" / config), "--data", str(data),
            "--out", str(out), *extra, "--set", *RUN_SET]


def _lungseg(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    if not LUNGSEG.exists():
        pytest.fail(f"Expected the lungseg console script beside {sys.executable} (pip install -e .)")
    return subprocess.run([str(LUNGSEG), *args], env=_env(), capture_output=True, text=True,
                          timeout=600, **kwargs)


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv") as handle:
        return list(csv.DictReader(handle))


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    import losses  # noqa: F401  (registers the losses in this warm process)

    return [w.numpy() for w in keras.saving.load_model(path).weights]


def _assert_same_run(reference: Path, resumed: Path) -> None:
    rows_ref, rows_res = _history(reference), _history(resumed)
    assert [r["epoch"] for r in rows_res] == ["1", "2", "3"]  # none lost, none repeated
    for a, b in zip(rows_ref, rows_res):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4)
        assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-6)
    for a, b in zip(_weights(reference / "checkpoints" / "last.keras"),
                    _weights(resumed / "checkpoints" / "last.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def reference_run(cli_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    done = _lungseg(_train_args(cli_data, out))
    assert done.returncode == 0, done.stderr
    (out.parent / "stdout.txt").write_text(done.stdout)
    (out.parent / "stderr.txt").write_text(done.stderr)
    return out


def test_output_to_a_file_has_one_line_per_epoch_and_no_cuda_probe(reference_run):
    stdout = (reference_run.parent / "stdout.txt").read_text()
    stderr = (reference_run.parent / "stderr.txt").read_text()
    assert "cuInit" not in stderr and "cudart_stub" not in stderr, stderr
    assert "\r" not in stdout and "\u2501" not in stdout  # no interactive bar (carriage returns, bar glyphs)
    epochs = re.findall(r"^Epoch (\d+)/3$", stdout, flags=re.M)
    steps = re.findall(r"^12/12 - .*loss: ", stdout, flags=re.M)
    assert epochs == ["1", "2", "3"] and len(steps) == 3, stdout


def test_kill_inside_an_epoch_then_resume_from_the_command_line(cli_data, reference_run, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([str(LUNGSEG), *_train_args(cli_data, out)], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    history = out / "history.csv"
    while time.monotonic() < deadline and process.poll() is None:
        if history.exists() and len(_history(history.parent)) >= 1:
            break
        time.sleep(0.01)
    time.sleep(0.1)  # inside epoch 2's steps
    assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()}"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert [r["epoch"] for r in _history(out)] == ["1"]
    assert (out / "checkpoints" / "last.keras").exists()

    resumed = _lungseg(_train_args(cli_data, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "Could not locate class" not in resumed.stderr
    _assert_same_run(reference_run, out)


_KILL_AT_RENAME = textwrap.dedent("""
    import os, signal, sys
    target, nth = sys.argv[1], int(sys.argv[2])
    real_replace, seen = os.replace, [0]
    def replace(src, dst, *args, **kwargs):
        if os.path.basename(os.fspath(dst)) == target:
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
    from pipelines.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("target, epochs_kept", [
    ("last.keras", ["1"]),   # epoch 2's checkpoint written to a temporary file, not yet renamed
    ("state.json", ["1"]),   # last.keras renamed, state.json not: resume rolls epoch 2 forward
])
def test_kill_during_the_checkpoint_write_then_resume(cli_data, reference_run, tmp_path, target,
                                                      epochs_kept):
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_RENAME, target, "2",
                             *_train_args(cli_data, out)],
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [r["epoch"] for r in _history(out)] == epochs_kept

    resumed = _lungseg(_train_args(cli_data, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(reference_run, out)
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if ".tmp" in p.name]
    assert target != "state.json" or not leftovers


_ALL_CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
_OTHER_LOSSES = ["{name: bce}", "{name: dice}", "{name: focal}", "{name: tversky}",
                 "{name: focal_tversky}", "{name: hybrid, weighting: learned, components: [bce, dice]}"]
_CASES = [(name, None) for name in _ALL_CONFIGS] + [("quick.yaml", loss) for loss in _OTHER_LOSSES]


def _small_set(config_name: str, loss: str | None) -> list[str]:
    extra = ["train.epochs=2", "train.steps_per_epoch=2", "train.val_every=2"]
    if "2d" in config_name:  # the 2.5D config: 2D patches
        extra += ["train.patch_size=[16,16]"]
    if loss is not None:
        extra += [f"loss={loss}"]
    return [*TINY, "train.tensorboard_images=false", *extra]


def test_every_config_and_loss_resumes_in_a_fresh_process(cli_data, tmp_path):
    from pipelines.train import train
    from segmentation.config import load_config

    runs = []
    for index, (config_name, loss) in enumerate(_CASES):
        out = tmp_path / f"run{index}"
        overrides = _small_set(config_name, loss)
        config = load_config(REPO / "configs" / config_name, overrides=overrides)
        with pytest.raises(KeyboardInterrupt):  # epoch 1 committed, killed inside epoch 2
            train(config, data_dir=cli_data, out_dir=out, progress=False,
                  callbacks=[_KillAfter(epoch=1, n_batches=1)])
        runs.append(["train", "--config", str(REPO / "configs" / config_name), "--data",
                     str(cli_data), "--out", str(out), "--resume", "--set", *overrides])
    # One new interpreter resumes them all: the first finds nothing imported but the CLI.
    script = ("import json, sys\nfrom pipelines.cli import main\n"
              "codes = [main(args) for args in json.loads(sys.argv[1])]\n"
              "print('CODES', json.dumps(codes))\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(runs)], env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(done.stdout.split("CODES", 1)[1])
    failed = [(case, code) for case, code in zip(_CASES, codes) if code != 0]
    assert not failed, f"{failed}\n{done.stderr[-3000:]}"
    for index in range(len(_CASES)):
        assert [r["epoch"] for r in _history(tmp_path / f"run{index}")] == ["1", "2"], _CASES[index]


def test_bfloat16_run_resumes_and_predicts_from_the_command_line(cli_data, tmp_path):
    """``train.mixed_precision: bfloat16``: killed in epoch 2, resumed and used by ``lungseg``."""
    import keras
    import nibabel as nib

    from pipelines.train import train
    from segmentation.config import load_config

    from pipelines.training.precision import cpu_flags

    out = tmp_path / "run"
    overrides = [*_small_set("quick.yaml", None), "train.mixed_precision=bfloat16"]
    config = load_config(REPO / "configs" / "quick.yaml", overrides=overrides)
    if "avx512f" not in cpu_flags():  # oneDNN has no bfloat16 convolution here: a clear error
        refused = _lungseg(["train", "--config", str(REPO / "configs" / "quick.yaml"), "--data",
                            str(cli_data), "--out", str(out), "--set", *overrides])
        assert refused.returncode != 0
        assert "Expected a GPU or an AVX-512 CPU for train.mixed_precision=bfloat16" in refused.stderr
        return
    with pytest.raises(KeyboardInterrupt):
        train(config, data_dir=cli_data, out_dir=out, progress=False,
              callbacks=[_KillAfter(epoch=1, n_batches=1)])
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the kill
    resumed = _lungseg(["train", "--config", str(REPO / "configs" / "quick.yaml"), "--data",
                        str(cli_data), "--out", str(out), "--resume", "--set", *overrides])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["epoch"] for r in _history(out)] == ["1", "2"]
    assert json.loads((out / "manifest.json").read_text())["precision"] == "mixed_bfloat16"

    import losses  # noqa: F401  (registers the losses in this warm process)

    model = keras.saving.load_model(out / "checkpoints" / "last.keras")
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # bf16: no scaling
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in model.layers)
    assert model(np.zeros((1, 16, 16, 16, 1), np.float32)).dtype == "float32"  # float32 logits

    image = sorted((cli_data / "imagesTr").iterdir())[0]
    predicted = _lungseg(["predict", "--model", str(out), "--input", str(image),
                          "--out", str(tmp_path / "pred")])
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    mask = nib.load(next((tmp_path / "pred").glob("*.nii.gz")))
    source = nib.load(image)
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine)
