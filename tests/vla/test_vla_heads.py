"""Action heads: shapes, losses, gradients, sampling mechanics, configs, and a tiny overfit each."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vla.heads import (
    ActionHead,
    DiffusionHead,
    DiffusionHeadConfig,
    FlowHead,
    FlowHeadConfig,
    RegressionHead,
    RegressionHeadConfig,
    TransformerDenoiserConfig,
    UNet1DDenoiserConfig,
    build_action_head,
    head_config_from_dict,
)

COND_DIM, ACTION_DIM, CHUNK, N_COND = 16, 3, 4, 3

TINY_TRANSFORMER = TransformerDenoiserConfig(hidden_dim=32, num_layers=1, num_heads=2)
TINY_UNET = UNet1DDenoiserConfig(down_dims=(16, 32), n_groups=4, kernel_size=3, time_embed_dim=16, cond_embed_dim=16)

VARIANTS = {
    "diffusion-transformer": DiffusionHeadConfig(denoiser=TINY_TRANSFORMER),
    "diffusion-unet": DiffusionHeadConfig(denoiser=TINY_UNET),
    "diffusion-v": DiffusionHeadConfig(denoiser=TINY_TRANSFORMER, prediction_type="v_prediction"),
    "diffusion-sample": DiffusionHeadConfig(denoiser=TINY_TRANSFORMER, prediction_type="sample", clip_sample=False),
    "flow-transformer": FlowHeadConfig(denoiser=TINY_TRANSFORMER),
    "flow-unet": FlowHeadConfig(denoiser=TINY_UNET, time_sampling="uniform"),
    "regression": RegressionHeadConfig(hidden_dim=32, num_layers=1, num_heads=2),
}
STOCHASTIC = [k for k in VARIANTS if not k.startswith("regression")]


def make_head(name: str, *, chunk_size: int = CHUNK, seed: int = 0) -> ActionHead:
    torch.manual_seed(seed)
    return build_action_head(VARIANTS[name], cond_dim=COND_DIM, action_dim=ACTION_DIM, chunk_size=chunk_size)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- shapes, loss, gradients --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("batch", [1, 3])
def test_loss_and_sample_shapes(name: str, batch: int) -> None:
    # chunk 5 is not a multiple of the UNet's 2x downsampling: exercises its padding path.
    head = make_head(name, chunk_size=5)
    cond = randn(batch, N_COND, COND_DIM, seed=1)
    actions = randn(batch, 5, ACTION_DIM, seed=2)
    loss = head.compute_loss(cond, actions)
    assert loss.shape == (batch, 5)
    assert torch.isfinite(loss).all()
    assert (loss >= 0).all()
    out = head.sample(cond)
    assert out.shape == (batch, 5, ACTION_DIM)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_number_of_cond_tokens_may_change(name: str) -> None:
    # Routing budgets change the token count at inference time; one head must accept any Nc.
    head = make_head(name)
    for n_tokens in (1, 7):
        out = head.sample(randn(2, n_tokens, COND_DIM, seed=n_tokens))
        assert out.shape == (2, CHUNK, ACTION_DIM)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_gradients_reach_every_parameter(name: str) -> None:
    head = make_head(name)
    cond = randn(2, N_COND, COND_DIM, seed=1).requires_grad_(True)
    loss = head.compute_loss(cond, randn(2, CHUNK, ACTION_DIM, seed=2))
    loss.mean().backward()
    missing = [n for n, p in head.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reached: {missing}"
    assert cond.grad is not None and cond.grad.abs().sum() > 0  # and flows back into the backbone


@pytest.mark.parametrize("name", list(VARIANTS))
def test_bad_input_shapes_are_refused(name: str) -> None:
    head = make_head(name)
    cond = randn(2, N_COND, COND_DIM, seed=1)
    with pytest.raises(ValueError, match="cond has shape"):
        head.compute_loss(randn(2, N_COND, COND_DIM + 1, seed=1), randn(2, CHUNK, ACTION_DIM, seed=2))
    with pytest.raises(ValueError, match="cond has shape"):
        head.sample(randn(N_COND, COND_DIM, seed=1))
    with pytest.raises(ValueError, match="actions has shape"):
        head.compute_loss(cond, randn(2, CHUNK + 1, ACTION_DIM, seed=2))


# --- sampling -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_sampling_is_deterministic_given_noise_and_leaves_noise_untouched(name: str) -> None:
    head = make_head(name).eval()
    cond = randn(2, N_COND, COND_DIM, seed=1)
    noise = randn(2, CHUNK, ACTION_DIM, seed=3)
    noise_copy = noise.clone()
    first = head.sample(cond, noise=noise)
    torch.randn(100)  # moving the global RNG must not matter
    second = head.sample(cond, noise=noise)
    assert torch.equal(first, second)
    assert torch.equal(noise, noise_copy)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_different_noise_gives_different_samples(name: str) -> None:
    head = make_head(name).eval()
    cond = randn(2, N_COND, COND_DIM, seed=1)
    a = head.sample(cond, noise=randn(2, CHUNK, ACTION_DIM, seed=3))
    b = head.sample(cond, noise=randn(2, CHUNK, ACTION_DIM, seed=4))
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("name", STOCHASTIC)
def test_generator_makes_noise_free_sampling_reproducible(name: str) -> None:
    head = make_head(name).eval()
    cond = randn(1, N_COND, COND_DIM, seed=1)
    a = head.sample(cond, generator=torch.Generator().manual_seed(7))
    b = head.sample(cond, generator=torch.Generator().manual_seed(7))
    c = head.sample(cond, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", ["diffusion-transformer", "diffusion-unet", "flow-transformer", "flow-unet"])
def test_num_steps_1_5_10_50_100_are_accepted(name: str) -> None:
    head = make_head(name).eval()
    cond = randn(1, N_COND, COND_DIM, seed=1)
    noise = randn(1, CHUNK, ACTION_DIM, seed=3)
    outs = {n: head.sample(cond, noise=noise, num_steps=n) for n in (1, 5, 10, 50, 100)}
    for n, out in outs.items():
        assert out.shape == (1, CHUNK, ACTION_DIM) and torch.isfinite(out).all(), n
    assert not torch.equal(outs[1], outs[10])  # the step count is really used
    # A call with another step count leaves no state behind (schedulers are per call).
    assert torch.equal(head.sample(cond, noise=noise), outs[head.default_num_steps])


def test_concurrent_sampling_with_different_step_counts_does_not_interfere() -> None:
    from concurrent.futures import ThreadPoolExecutor

    head = make_head("diffusion-transformer").eval()
    cond = randn(1, N_COND, COND_DIM, seed=1)
    noise = randn(1, CHUNK, ACTION_DIM, seed=3)
    jobs = [1, 5, 10, 50] * 3

    def run(n: int) -> torch.Tensor:
        with torch.no_grad():  # grad mode is thread-local, and it picks the attention kernel
            return head.sample(cond, noise=noise, num_steps=n)

    expected = {n: run(n) for n in set(jobs)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, jobs))
    for n, out in zip(jobs, results):
        assert torch.equal(out, expected[n]), n


def test_invalid_num_steps_are_refused() -> None:
    cond = randn(1, N_COND, COND_DIM, seed=1)
    diffusion, flow = make_head("diffusion-transformer"), make_head("flow-transformer")
    for bad in (0, 101, 2.5, True):
        with pytest.raises(ValueError, match="num_steps"):
            diffusion.sample(cond, num_steps=bad)
    for bad in (0, -1, 1.0):
        with pytest.raises(ValueError, match="num_steps"):
            flow.sample(cond, num_steps=bad)
    with pytest.raises(ValueError, match="noise has shape"):
        diffusion.sample(cond, noise=torch.zeros(1, CHUNK, ACTION_DIM + 1))


def test_default_num_steps() -> None:
    assert make_head("diffusion-transformer").default_num_steps == 10
    assert make_head("flow-transformer").default_num_steps == 10
    assert make_head("regression").default_num_steps == 1
    head = build_action_head(DiffusionHeadConfig(denoiser=TINY_TRANSFORMER, num_inference_steps=4),
                             cond_dim=COND_DIM, action_dim=ACTION_DIM, chunk_size=CHUNK)
    assert head.default_num_steps == 4


def test_regression_ignores_noise_and_num_steps() -> None:
    head = make_head("regression").eval()
    cond = randn(2, N_COND, COND_DIM, seed=1)
    base = head.sample(cond)
    assert torch.equal(base, head.sample(cond, noise=randn(2, CHUNK, ACTION_DIM, seed=5), num_steps=50))


# --- the loss targets and the samplers, checked against oracles ----------------------------------


class _Oracle(torch.nn.Module):
    """Stands in for a denoiser: returns fn(x_t, t) whatever the cond."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def encode_cond(self, cond):
        return cond

    def forward(self, x, t, cond_encoded):
        return self.fn(x, t) + 0 * self.dummy


def _alphas_cumprod(head: DiffusionHead) -> torch.Tensor:
    return head.train_scheduler.alphas_cumprod.float()


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_diffusion_oracle_gives_zero_loss_and_exact_samples(prediction_type: str) -> None:
    """A denoiser that predicts exactly what the prediction type asks for (computed from the known
    clean chunk x0) has zero training loss, and DDIM with it recovers x0 at every step count."""
    head = build_action_head(DiffusionHeadConfig(denoiser=TINY_TRANSFORMER, prediction_type=prediction_type),
                             cond_dim=COND_DIM, action_dim=ACTION_DIM, chunk_size=CHUNK)
    x0 = torch.rand(2, CHUNK, ACTION_DIM) * 1.6 - 0.8
    abar = _alphas_cumprod(head)
    T = head.config.num_train_timesteps

    def oracle(x_t, t):
        k = torch.round(t * T).long()
        a = abar[k][:, None, None]
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        if prediction_type == "epsilon":
            return eps
        if prediction_type == "sample":
            return x0.expand_as(x_t)
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    head.denoiser = _Oracle(oracle)
    cond = torch.zeros(2, N_COND, COND_DIM)
    loss = head.compute_loss(cond, x0)
    assert loss.shape == (2, CHUNK) and loss.max() < 1e-6
    for steps in (1, 5, 10, 100):
        out = head.sample(cond, noise=randn(2, CHUNK, ACTION_DIM, seed=steps), num_steps=steps)
        torch.testing.assert_close(out, x0, atol=1e-3, rtol=0)


def test_flow_oracle_gives_zero_loss_and_exact_samples() -> None:
    """On the straight path the true velocity is (x0 - x_t) / (1 - t); Euler is exact for it."""
    head = make_head("flow-transformer")
    x0 = torch.rand(2, CHUNK, ACTION_DIM) * 2 - 1
    noise = randn(2, CHUNK, ACTION_DIM, seed=1)
    # The training target is action - noise: check it with the noise fixed.
    head.denoiser = _Oracle(lambda x_t, t: x0 - noise)
    assert head.compute_loss(torch.zeros(2, N_COND, COND_DIM), x0, noise=noise).max() < 1e-10
    head.denoiser = _Oracle(lambda x_t, t: (x0 - x_t) / (1 - t)[:, None, None])
    for steps in (1, 3, 10, 100):
        out = head.sample(torch.zeros(2, N_COND, COND_DIM), noise=noise, num_steps=steps)
        torch.testing.assert_close(out, x0, atol=1e-3, rtol=0)


def test_flow_beta_time_sampling_emphasises_the_noisy_end() -> None:
    head = make_head("flow-transformer")  # time_sampling="beta", pi0's Beta(1.5, 1)
    torch.manual_seed(0)
    t = head._sample_times(20000, torch.device("cpu"))
    assert t.min() >= 0 and t.max() <= 1 - head.config.time_epsilon + 1e-6
    # noise level u = 1 - t ~ Beta(1.5, 1): mean 0.6, so t has mean about 0.4 (uniform: 0.5)
    assert abs(t.mean().item() - 0.4) < 0.01


def test_diffusion_train_noise_samples_average_k_single_draw_losses() -> None:
    k, batch = 3, 2
    multi = build_action_head(DiffusionHeadConfig(denoiser=TINY_TRANSFORMER, train_noise_samples=k),
                              cond_dim=COND_DIM, action_dim=ACTION_DIM, chunk_size=CHUNK)
    single = make_head("diffusion-transformer")
    single.load_state_dict(multi.state_dict())
    cond = randn(batch, N_COND, COND_DIM, seed=1)
    actions = randn(batch, CHUNK, ACTION_DIM, seed=2)
    torch.manual_seed(5)
    loss = multi.compute_loss(cond, actions)  # (B, H)
    assert loss.shape == (batch, CHUNK)
    # The same draws, made by hand: K rows per observation, then the mean over each K.
    torch.manual_seed(5)
    noise = torch.randn(batch * k, CHUNK, ACTION_DIM)
    per_draw = single.compute_loss(cond.repeat_interleave(k, 0), actions.repeat_interleave(k, 0), noise=noise)
    torch.testing.assert_close(loss, per_draw.view(batch, k, CHUNK).mean(1))
    # Explicit noise keeps the one-draw meaning (used by deterministic tests and oracles).
    assert multi.compute_loss(cond, actions, noise=noise[:batch]).shape == (batch, CHUNK)
    with pytest.raises(ValueError, match="train_noise_samples"):
        DiffusionHeadConfig(train_noise_samples=0)


# --- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_config_round_trips_through_json(name: str) -> None:
    config = VARIANTS[name]
    data = json.loads(json.dumps(config.to_dict()))
    assert data["type"] == config.type
    rebuilt = head_config_from_dict(data)
    assert rebuilt == config
    assert type(rebuilt) is type(config)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: DiffusionHeadConfig(num_train_timesteps=0), r"num_train_timesteps=0.*integer >= 2"),
        (lambda: DiffusionHeadConfig(num_inference_steps=200), r"num_inference_steps=200.*at most"),
        (lambda: DiffusionHeadConfig(prediction_type="x0"), r"prediction_type='x0'.*one of"),
        (lambda: DiffusionHeadConfig(beta_schedule="cosine"), r"beta_schedule='cosine'"),
        (lambda: DiffusionHeadConfig(clip_sample_range=0.0), r"clip_sample_range=0.0"),
        (lambda: DiffusionHeadConfig(denoiser={"type": "transformer"}), r"DiffusionHeadConfig.denoiser"),
        (lambda: DiffusionHeadConfig(type="flow"), r"DiffusionHeadConfig.type='flow'"),
        (lambda: FlowHeadConfig(num_inference_steps=0), r"FlowHeadConfig.num_inference_steps=0"),
        (lambda: FlowHeadConfig(time_sampling="logit"), r"time_sampling='logit'"),
        (lambda: FlowHeadConfig(beta_alpha=-1.0), r"beta_alpha=-1.0"),
        (lambda: RegressionHeadConfig(hidden_dim=30, num_heads=4), r"hidden_dim=30.*multiple of num_heads=4"),
        (lambda: RegressionHeadConfig(dropout=1.0), r"dropout=1.0"),
        (lambda: TransformerDenoiserConfig(hidden_dim=33, num_heads=1), r"hidden_dim=33.*even"),
        (lambda: TransformerDenoiserConfig(num_layers=0), r"num_layers=0"),
        (lambda: UNet1DDenoiserConfig(down_dims=()), r"down_dims=\(\)"),
        (lambda: UNet1DDenoiserConfig(down_dims=(16, 20), n_groups=8), r"multiple of n_groups=8.*\[20\]"),
        (lambda: UNet1DDenoiserConfig(kernel_size=4), r"kernel_size=4.*odd"),
        (lambda: UNet1DDenoiserConfig(down_dims=[16, 32]), r"down_dims=\[16, 32\]"),
    ],
)
def test_config_validation_names_field_and_value(factory, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_config_from_dict_rejects_unknown_keys_and_types() -> None:
    with pytest.raises(ValueError, match=r"type='ddpm'.*expected one of"):
        head_config_from_dict({"type": "ddpm"})
    with pytest.raises(ValueError, match=r"type=None"):
        head_config_from_dict({"num_inference_steps": 3})
    with pytest.raises(ValueError, match=r"unknown keys \['num_step'\]"):
        head_config_from_dict({"type": "flow", "num_step": 3})
    with pytest.raises(ValueError, match=r"denoiser config: type='mlp'"):
        head_config_from_dict({"type": "diffusion", "denoiser": {"type": "mlp"}})
    with pytest.raises(ValueError, match=r"unknown keys \['depth'\]"):
        head_config_from_dict({"type": "diffusion", "denoiser": {"type": "unet1d", "depth": 3}})
    with pytest.raises(TypeError, match="build_action_head"):
        build_action_head(TINY_TRANSFORMER, cond_dim=4, action_dim=2, chunk_size=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size=0"):
        build_action_head(VARIANTS["regression"], cond_dim=4, action_dim=2, chunk_size=0)


def test_build_action_head_picks_the_class_from_the_config_type() -> None:
    dims = dict(cond_dim=COND_DIM, action_dim=ACTION_DIM, chunk_size=CHUNK)
    assert isinstance(build_action_head(VARIANTS["diffusion-unet"], **dims), DiffusionHead)
    assert isinstance(build_action_head(VARIANTS["flow-transformer"], **dims), FlowHead)
    assert isinstance(build_action_head(VARIANTS["regression"], **dims), RegressionHead)


# --- overfitting a fixed mapping cond -> actions --------------------------------------------------


def _overfit(name: str, steps: int, repeat: int = 8) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Train on 4 fixed (cond, chunk) pairs (each repeated `repeat` times per batch to cut gradient noise);
    return the final loss, sampled chunks (fixed noise) and the targets."""
    torch.manual_seed(0)
    cond = torch.randn(4, N_COND, COND_DIM)
    target = torch.rand(4, CHUNK, ACTION_DIM) * 1.6 - 0.8  # inside the clip range of the diffusion head
    head = make_head(name)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=0.0)
    cond_b, target_b = cond.repeat(repeat, 1, 1), target.repeat(repeat, 1, 1)
    for _ in range(steps):
        loss = head.compute_loss(cond_b, target_b).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        sampled = head.sample(cond, noise=randn(4, CHUNK, ACTION_DIM, seed=1))
    return loss.item(), sampled, target


@pytest.mark.parametrize(
    ("name", "steps", "max_loss"),
    [("regression", 200, 0.05), ("flow-transformer", 400, 0.05), ("diffusion-transformer", 400, 0.1)],
)
def test_overfits_a_fixed_mapping(name: str, steps: int, max_loss: float) -> None:
    loss, sampled, target = _overfit(name, steps)
    # Untrained, the mean error is about 0.5 (targets uniform in [-0.8, 0.8]).
    assert math.isfinite(loss) and loss < max_loss
    assert (sampled - target).abs().mean() < 0.1
    assert (sampled - target).abs().max() < 0.35


@pytest.mark.slow
@pytest.mark.parametrize("name", ["diffusion-unet", "flow-unet"])
def test_unet_heads_overfit_a_fixed_mapping(name: str) -> None:
    # The UNet sees cond only mean-pooled and is slower per step on CPU (~1 min each).
    loss, sampled, target = _overfit(name, 1000, repeat=16)
    assert math.isfinite(loss) and loss < 0.1
    assert (sampled - target).abs().mean() < 0.1
    assert (sampled - target).abs().max() < 0.35
