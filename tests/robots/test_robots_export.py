"""`vla export` (robots/export.py) and the torch-free runtime (robots/onnx_runtime.py).

The default run exports one `tiny` checkpoint (diffusion head, both routing stages, fp32 + fp16)
once per module and checks it against PyTorch; the `small` model and the flow / regression /
UNet heads are exported under the `slow` marker (each export costs 15-60 s on this CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robots import export as ex
from robots import onnx_runtime as rt

REPO_ROOT = Path(__file__).resolve().parents[2]
PY310 = Path("/root/.pyenv/versions/3.10.13/bin/python")
# Whole-sampler comparisons (several denoising steps, any batch size) against PyTorch. onnxruntime
# picks other GEMM kernels than PyTorch, and each step of an untrained model feeds its rounding into
# the next: a CI machine measured 2.6e-4 on one of 140 entries at batch 5. A wrong graph (a frozen
# batch or text axis, a missing step) is off by O(0.1-1), so 1e-3 still catches every real defect.
SAMPLER_ATOL = 1e-3


def _random_stats(dim: int, rng: np.random.Generator) -> dict:
    low, high = -rng.random(dim) - 0.5, rng.random(dim) + 0.5
    return {"q01": low, "q99": high, "mean": (low + high) / 2, "std": (high - low) / 4,
            "min": low - 0.1, "max": high + 0.1}


def make_checkpoint(directory: Path, preset: str = "tiny", seed: int = 0, **overrides) -> Path:
    """A checkpoint with random weights and random (valid) stats."""
    from vla import VLAModel, presets

    torch.manual_seed(seed)
    config = presets.get(preset, **overrides)
    rng = np.random.default_rng(seed)
    stats = {"observation.state": _random_stats(config.state_dim, rng), "action": _random_stats(config.action_dim, rng)}
    VLAModel(config, stats).save_pretrained(directory)
    return directory


def raw_observation(config, size: tuple[int, int], seed: int, task: str = "put the bowl on the plate") -> dict:
    rng = np.random.default_rng(seed)
    obs = {f"observation.images.{c}": rng.integers(0, 256, (*size, 3), dtype=np.uint8) for c in config.camera_names}
    obs["observation.state"] = rng.uniform(-1, 1, config.state_dim).astype(np.float32)
    obs["task"] = task
    return obs


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    checkpoint = make_checkpoint(root / "ckpt")
    out = root / "onnx"
    lines: list[str] = []
    options = ex.ExportOptions(fp16=True, num_steps=(2,))  # + a 2-step DDIM schedule
    report = ex.export_policy(checkpoint, out, options, log=lines.append)
    return {"checkpoint": checkpoint, "out": out, "report": report, "log": "\n".join(lines)}


@pytest.fixture(scope="module")
def tiny_policy(tiny_export):
    from policies import VLAPolicy

    return VLAPolicy.from_checkpoint(tiny_export["checkpoint"])


# --------------------------------------------------------------------------------------------
# The export itself


def test_export_writes_graphs_meta_and_parity(tiny_export):
    out = tiny_export["out"]
    for name in ("encoder.onnx", "denoiser_step.onnx", "encoder_fp16.onnx", "denoiser_step_fp16.onnx",
                 "export_meta.json", "stats.json", "parity.json", "build_trt_engines.sh"):
        assert (out / name).is_file(), name
    assert os.access(out / "build_trt_engines.sh", os.X_OK)
    parity = json.loads((out / "parity.json").read_text())
    assert parity == json.loads(json.dumps(tiny_export["report"]))
    assert set(parity["parts"]) == {"cond", "cond_encoded", "denoiser_step", "actions", "policy_actions"}
    assert parity["max_abs_error"] == max(parity["parts"].values())
    assert parity["max_abs_error"] < 1e-4 and parity["passed"]
    # fp16 really computes in half precision (so it differs from fp32), but stays close.
    fp16 = parity["fp16"]
    assert 1e-5 < fp16["max_abs_error"] < fp16["tolerance"] and fp16["passed"]
    assert "max abs error" in tiny_export["log"]
    meta = json.loads((out / rt.META_FILE).read_text())
    assert meta["sampler"]["kind"] == "diffusion" and meta["opset"] == ex.DEFAULT_OPSET
    assert sorted(meta["sampler"]["schedules"]) == ["2", "5"]  # tiny's default 5 + --num-steps 2
    assert [s["timestep"] for s in meta["sampler"]["schedules"]["5"]] == [49, 39, 29, 19, 9]
    assert [s["timestep"] for s in meta["sampler"]["schedules"]["2"]] == [49, 24]


def test_fp16_graph_holds_half_weights_and_float_io(tiny_export):
    import onnx

    graph = onnx.load(str(tiny_export["out"] / "encoder_fp16.onnx")).graph
    dtypes = {init.data_type for init in graph.initializer}
    assert onnx.TensorProto.FLOAT16 in dtypes
    assert all(
        i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in [*graph.input, *graph.output]
    )


def test_graphs_have_dynamic_batch_and_text_length(tiny_export, tiny_policy):
    """Batch 5 and another text length than the traced example: still the PyTorch result."""
    model = tiny_policy.model
    exported = rt.ExportedModel(tiny_export["out"])
    batch = ex.make_batch(model, 5, seed=123)
    noise = torch.randn(5, model.config.chunk_size, model.config.action_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.sample_actions(batch, noise=noise).numpy()
    got = exported.sample_actions(**ex.to_numpy_feeds(model, batch), noise=noise.numpy())
    assert got.shape == (5, model.config.chunk_size, model.config.action_dim)
    np.testing.assert_allclose(got, expected, atol=SAMPLER_ATOL, rtol=0)


@pytest.mark.parametrize("size", [(32, 32), (48, 40), (20, 24)])
def test_onnx_policy_matches_vla_policy(tiny_export, tiny_policy, size):
    policy = rt.OnnxPolicy(tiny_export["out"])
    obs = raw_observation(tiny_policy.model.config, size, seed=size[0])
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in obs.items()}
    noise = np.random.default_rng(7).standard_normal((4, 7)).astype(np.float32)
    expected = tiny_policy.infer(obs, noise=noise)["actions"]
    got = policy.infer(obs, noise=noise)["actions"]
    assert got.dtype == np.float32 and got.shape == expected.shape == (4, 7)
    np.testing.assert_allclose(got, expected, atol=SAMPLER_ATOL, rtol=0)
    for key, value in before.items():  # the observation is not modified
        assert np.array_equal(obs[key], value) if isinstance(value, np.ndarray) else obs[key] == value


def test_other_exported_step_count_matches_vla_policy(tiny_export, tiny_policy):
    from policies import VLAPolicy

    obs = raw_observation(tiny_policy.model.config, (32, 32), seed=4)
    noise = np.random.default_rng(8).standard_normal((4, 7)).astype(np.float32)
    expected = VLAPolicy(tiny_policy.model, num_steps=2).infer(obs, noise=noise)["actions"]
    got = rt.OnnxPolicy(tiny_export["out"], num_steps=2).infer(obs, noise=noise)["actions"]
    np.testing.assert_allclose(got, expected, atol=SAMPLER_ATOL, rtol=0)
    default = rt.OnnxPolicy(tiny_export["out"]).infer(obs, noise=noise)["actions"]
    assert np.abs(default - got).max() > 1e-3  # 5 steps really differ from 2


def test_onnx_policy_noise_stream_and_reset(tiny_export, tiny_policy):
    policy = rt.OnnxPolicy(tiny_export["out"], seed=3)
    obs = raw_observation(tiny_policy.model.config, (32, 32), seed=0)
    first, second = policy.infer(obs)["actions"], policy.infer(obs)["actions"]
    assert not np.allclose(first, second)  # fresh noise per call
    policy.reset()
    np.testing.assert_array_equal(policy.infer(obs)["actions"], first)  # reset re-seeds
    assert policy.metadata["chunk_size"] == 4 and policy.metadata["camera_names"] == ["agentview", "wrist"]
    with pytest.raises(ValueError, match="noise"):
        policy.infer(obs, noise=np.zeros((3, 7)))


def test_onnx_policy_rejects_bad_observations(tiny_export, tiny_policy):
    policy = rt.OnnxPolicy(tiny_export["out"])
    good = raw_observation(tiny_policy.model.config, (32, 32), seed=0)
    with pytest.raises(KeyError, match="observation.images.wrist"):
        policy.infer({k: v for k, v in good.items() if k != "observation.images.wrist"})
    with pytest.raises(ValueError, match="uint8"):
        policy.infer({**good, "observation.images.agentview": good["observation.images.agentview"].astype(np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        policy.infer({**good, "observation.state": np.full(8, np.nan, np.float32)})
    with pytest.raises(ValueError, match=r"\(8,\)"):
        policy.infer({**good, "observation.state": np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match="task"):
        policy.infer({**good, "task": "  "})


def test_runtime_options_and_missing_files(tiny_export, tmp_path):
    with pytest.raises(ValueError, match="num_steps=3.*5"):
        rt.OnnxPolicy(tiny_export["out"], num_steps=3)  # only the 5-step DDIM schedule was exported
    with pytest.raises(ValueError, match="precision"):
        rt.OnnxPolicy(tiny_export["out"], precision="int8")
    with pytest.raises(rt.ExportFormatError, match="export_meta.json is missing"):
        rt.OnnxPolicy(tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(tiny_export["out"], partial)
    (partial / "denoiser_step.onnx").unlink()
    with pytest.raises(rt.ExportFormatError, match="denoiser_step.onnx is missing"):
        rt.OnnxPolicy(partial)


def test_runtime_module_runs_without_torch(tiny_export):
    """The robot-side module must not import torch: run it in a process where importing torch fails."""
    code = f"""
import sys, importlib.abc
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from robots.onnx_runtime import OnnxPolicy
policy = OnnxPolicy({str(tiny_export['out'])!r}, seed=0)
rng = np.random.default_rng(0)
obs = {{"observation.images.agentview": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
        "observation.images.wrist": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
        "observation.state": np.zeros(8, np.float32), "task": "pick up the bowl"}}
actions = policy.infer(obs)["actions"]
assert actions.shape == (4, 7) and np.isfinite(actions).all(), actions
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


# --------------------------------------------------------------------------------------------
# Pieces of the runtime against their PyTorch originals (no export needed)


def test_feature_keys_agree_with_vla():
    from vla import features

    assert rt.OBS_IMAGE_PREFIX == features.OBS_IMAGE_PREFIX
    assert rt.OBS_STATE == features.OBS_STATE
    assert rt.TASK == features.TASK


@pytest.mark.parametrize("kind", ["words", "bytes"])
def test_scratch_tokenizer_matches_vla(kind):
    from vla.features import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS
    from vla.tokenizer import BOS_ID, EOS_ID, NUM_SPECIAL, PAD_ID, ByteTokenizer, WordHashTokenizer

    reference = WordHashTokenizer(12, 512) if kind == "words" else ByteTokenizer(12)
    ours = rt.ScratchTokenizer(kind, 12, reference.vocab_size, PAD_ID, BOS_ID, EOS_ID, NUM_SPECIAL)
    texts = ["Put the BOWL on the plate.", "ok", "Öffne die Schublade, dann schließe sie!",
             "a very long instruction that is certainly longer than twelve tokens, so it is truncated"]
    expected = reference(texts)
    tokens, mask = ours(texts)
    np.testing.assert_array_equal(tokens, expected[OBS_LANGUAGE_TOKENS].numpy())
    np.testing.assert_array_equal(mask, expected[OBS_LANGUAGE_ATTENTION_MASK].numpy())
    assert tokens.dtype == np.int64 and mask.dtype == bool
    # The untruncated count that both policies check before acting on an instruction.
    assert [ours.count_tokens(t) for t in texts] == [reference.count_tokens(t) for t in texts]
    assert ours.count_tokens(texts[3]) > 12


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (17, 90), (8, 8)])
def test_image_preprocessing_matches_policy_transform(size):
    from policies.transforms import ImagesToModel

    image = np.random.default_rng(size[1]).integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = ImagesToModel(("cam",), (32, 32)).convert("k", image).numpy()
    got = rt.image_to_model("k", image, (32, 32))
    assert got.shape == (3, 32, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("num_steps", [1, 4, 10])
def test_numpy_ddim_update_matches_diffusers(prediction_type, num_steps):
    """Every step of the numpy sampler equals DDIMScheduler.step (eta = 0) as the head calls it."""
    from vla.heads import DiffusionHead, DiffusionHeadConfig

    head = DiffusionHead(DiffusionHeadConfig(prediction_type=prediction_type, num_train_timesteps=20),
                         cond_dim=8, action_dim=3, chunk_size=4)
    scheduler = head._sampling_scheduler(num_steps)
    steps = [rt.DDIMStep(**s) for s in ex.ddim_schedule(head, num_steps)]
    assert [s.timestep for s in steps] == scheduler.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, generator=g)
    for step in steps:
        out = torch.randn(2, 4, 3, generator=g) * 2
        expected = scheduler.step(out, step.timestep, x, eta=0.0).prev_sample
        got = rt.ddim_update(x.numpy(), out.numpy(), step, prediction_type, 1.0)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6, rtol=1e-6)
        x = expected


# --------------------------------------------------------------------------------------------
# Errors and the CLI


def test_bad_paths_give_clear_errors(tmp_path, tiny_export):
    with pytest.raises(ex.ExportError, match="no such checkpoint directory"):
        ex.check_paths(tmp_path / "missing", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ex.ExportError, match="no config.json"):
        ex.check_paths(empty, tmp_path / "out")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ex.ExportError, match="is a file"):
        ex.check_paths(a_file, tmp_path / "out")
    with pytest.raises(ex.ExportError, match="exists and is not a directory"):
        ex.check_paths(tiny_export["checkpoint"], a_file)
    with pytest.raises(ex.ExportError, match="is the checkpoint directory"):
        ex.check_paths(tiny_export["checkpoint"], tiny_export["checkpoint"])


def test_reexport_removes_only_its_own_previous_files(tmp_path):
    for name in ("encoder_fp16.onnx", "head.onnx", "parity.json", "notes.txt"):
        (tmp_path / name).write_text("old")
    (tmp_path / "tokenizer").mkdir()
    ex._remove_previous_export(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_export_options_are_validated():
    with pytest.raises(ex.ExportError, match="opset = 12"):
        ex.ExportOptions(opset=12)
    with pytest.raises(ex.ExportError, match="token_budget"):
        ex.ExportOptions(token_budget=1.5)
    with pytest.raises(ex.ExportError, match="num_steps"):
        ex.ExportOptions(num_steps=(0,))
    with pytest.raises(ex.ExportError, match="parity_batch"):
        ex.ExportOptions(max_batch=2, parity_batch=3)


def test_cli_reports_errors_with_exit_code_2(tmp_path, tiny_export, capsys):
    parser = argparse.ArgumentParser()
    ex.register(parser.add_subparsers())
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for argv, message in (
        (["export", "--policy", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "no such checkpoint"),
        (["export", "--policy", str(tiny_export["checkpoint"]), "--out", str(a_file)], "not a directory"),
        (["export", "--policy", str(tiny_export["checkpoint"]), "--out", str(tmp_path / "o"), "--opset", "9"], "opset"),
    ):
        args = parser.parse_args(argv)
        assert args.func(args) == 2
        err = capsys.readouterr().err
        assert "vla export: error:" in err and message in err
    assert not (tmp_path / "o").exists()  # nothing written on error


def test_trt_script_is_valid_bash_and_reads_the_meta(tiny_export, tmp_path):
    """Without TensorRT we can check the script parses, derives the shape profiles from the meta
    and calls trtexec with them (a fake trtexec records its arguments)."""
    script = tiny_export["out"] / "build_trt_engines.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    fake = tmp_path / "trtexec"
    fake.write_text('#!/usr/bin/env bash\necho "$@" >> "$(dirname "$0")/calls.txt"\n')
    fake.chmod(0o755)
    work = tmp_path / "exp"
    shutil.copytree(tiny_export["out"], work)
    result = subprocess.run(["bash", str(script), str(work), "--fp16", "--batch", "2"], capture_output=True,
                            text=True, env={**os.environ, "TRTEXEC": str(fake), "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 2
    assert f"--onnx={work}/encoder.onnx" in calls[0] and "--fp16" in calls[0]
    assert "--maxShapes=state:2x8,tokens:2x24,attention_mask:2x24,image_agentview:2x3x32x32" in calls[0]
    assert "--minShapes=x_t:1x4x7,t:1,cond_encoded:1x2x32" in calls[1]
    assert f"--saveEngine={work}/trt/denoiser_step.engine" in calls[1]


def test_frozen_text_encoder_exports_as_its_own_graph_run_once_per_instruction(tiny_bert_dir, tmp_path):
    """A model whose instruction a frozen encoder reads: text_encoder.onnx (run once per
    instruction by the runtime, then cached) feeds the encoder graph's text_features."""
    import dataclasses

    from vla.config import FrozenTextEncoderConfig

    from vla import presets

    base = presets.get("tiny")
    encoder = FrozenTextEncoderConfig(path=tiny_bert_dir, max_length=16)
    checkpoint = make_checkpoint(tmp_path / "ckpt", language=dataclasses.replace(base.language, text_encoder=encoder))
    out = tmp_path / "onnx"
    report = ex.export_policy(checkpoint, out, ex.ExportOptions(), log=lambda line: None)
    assert (out / "text_encoder.onnx").is_file() and report["passed"], report
    assert "text_features" in report["parts"] and report["parts"]["text_features"] < 1e-4
    meta = json.loads((out / rt.META_FILE).read_text())
    assert meta["io"]["encoder_inputs"][:3] == ["state", "text_features", "text_mask"]
    assert meta["text_encoder"]["output"] == "pooled" and meta["text_encoder"]["feature_dim"] == 32
    policy = rt.OnnxPolicy(out, seed=0)
    config = presets.get("tiny")
    for seed in range(3):
        policy.infer(raw_observation(config, (32, 32), seed))
    policy.infer(raw_observation(config, (32, 32), 3, task="open the drawer"))
    assert len(policy.model._text_cache) == 2  # two instructions, two encoder runs
    fake = tmp_path / "trtexec"
    fake.write_text('#!/usr/bin/env bash\necho "$@" >> "$(dirname "$0")/calls.txt"\n')
    fake.chmod(0o755)
    result = subprocess.run(["bash", str(out / "build_trt_engines.sh"), str(out)], capture_output=True, text=True,
                            env={**os.environ, "TRTEXEC": str(fake), "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert f"--onnx={out}/text_encoder.onnx" in calls[0] and "tokens:1x16" in calls[0]
    assert "text_features:1x1x32,text_mask:1x1" in calls[1]


@pytest.mark.skipif(not PY310.exists(), reason="no Python 3.10 interpreter (pyenv) on this machine")
def test_robot_side_modules_compile_on_python_310():
    files = [REPO_ROOT / "robots" / "onnx_runtime.py", REPO_ROOT / "robots" / "export.py"]
    result = subprocess.run([str(PY310), "-c", "import sys, ast; [ast.parse(open(f).read(), f, feature_version=(3, 10)) "
                             "for f in sys.argv[1:]]; [compile(open(f).read(), f, 'exec') for f in sys.argv[1:]]",
                             *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# Slow: the `small` model (the checked number) and the other heads


@pytest.mark.slow
def test_small_model_parity_below_1e4(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "small", "small")
    report = ex.export_policy(checkpoint, tmp_path / "onnx", ex.ExportOptions(), log=lambda *_: None)
    assert report["max_abs_error"] < 1e-4, report


@pytest.mark.slow
@pytest.mark.parametrize("head", ["flow", "regression", "unet1d"])
def test_other_heads_export_with_parity(tmp_path, head):
    from vla.heads import FlowHeadConfig, RegressionHeadConfig, TransformerDenoiserConfig, UNet1DDenoiserConfig

    small_tf = TransformerDenoiserConfig(hidden_dim=32, num_layers=1, num_heads=2, mlp_ratio=2.0)
    configs = {
        "flow": FlowHeadConfig(denoiser=small_tf, num_inference_steps=4),
        "regression": RegressionHeadConfig(hidden_dim=32, num_layers=1, num_heads=2),
        "unet1d": FlowHeadConfig(denoiser=UNet1DDenoiserConfig(down_dims=(16, 32), time_embed_dim=16,
                                                               cond_embed_dim=16), num_inference_steps=3),
    }
    checkpoint = make_checkpoint(tmp_path / "ckpt", head=configs[head])
    report = ex.export_policy(checkpoint, tmp_path / "onnx", ex.ExportOptions(), log=lambda *_: None)
    assert report["max_abs_error"] < 1e-4, report
    from policies import VLAPolicy

    obs = raw_observation(VLAPolicy.from_checkpoint(checkpoint).model.config, (40, 40), seed=1)
    noise = np.random.default_rng(0).standard_normal((4, 7)).astype(np.float32)
    np.testing.assert_allclose(rt.OnnxPolicy(tmp_path / "onnx").infer(obs, noise=noise)["actions"],
                               VLAPolicy.from_checkpoint(checkpoint).infer(obs, noise=noise)["actions"],
                               atol=SAMPLER_ATOL, rtol=0)
