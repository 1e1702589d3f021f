"""The `Policy` protocol and the metadata a policy describes itself with.

A policy is anything that maps one raw observation (robot units: uint8 HWC camera images, proprio
state, the instruction string; keys per `vla.features`) to a chunk of actions in environment
units. Everything that executes actions -- the LIBERO evaluation runner, the policy server, the
ROS bridge -- talks to this protocol only, so a scripted expert, a random baseline, a VLA model,
or a wrapper around any of them are scored and served identically.

    obs = {
        "observation.images.agentview": uint8 (H, W, 3),
        "observation.images.wrist":     uint8 (H, W, 3),
        "observation.state":            float (S,),
        "task":                         str,
    }
    policy.infer(obs) -> {"actions": float32 (H_out, A), ...}   # H_out: chunk_size, or 1 step
    policy.reset()                                              # call at every episode start
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

from policies.validation import ObservationSpec

# The one output key every policy returns. Plural on purpose: it always holds a (T, A) array,
# even when T == 1, so callers never special-case one step against a chunk.
ACTIONS = "actions"


@runtime_checkable
class Policy(Protocol):
    """Raw observation in, actions out. Implementations must not mutate `obs`."""

    def infer(self, obs: dict) -> dict:
        """Return {"actions": float32 np.ndarray (T, A)} in environment units, plus optional extras."""
        ...

    def reset(self) -> None:
        """Forget all per-episode state (action queues, ensembling buffers, noise RNG)."""
        ...


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"PolicyMetadata.{name}={value!r}: expected a positive int")


@dataclasses.dataclass(frozen=True)
class PolicyMetadata:
    """What a policy expects and produces; sent by the policy server on connect.

    image_size: (height, width) of the images the model sees. Raw camera images of another size
    are resized to it by the input transforms, so it is informative for clients, not a hard limit.
    """

    camera_names: tuple[str, ...]
    image_size: tuple[int, int]
    state_dim: int
    action_dim: int
    chunk_size: int
    n_obs_steps: int = 1
    # Actions executed per model call by a chunk-executing wrapper; None for a bare policy.
    n_action_steps: int | None = None

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store tuples so the dataclass stays hashable/frozen.
        object.__setattr__(self, "camera_names", tuple(self.camera_names))
        size = self.image_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        size = tuple(size)
        object.__setattr__(self, "image_size", size)
        if not self.camera_names or not all(isinstance(c, str) and c for c in self.camera_names):
            raise ValueError(
                f"PolicyMetadata.camera_names={self.camera_names!r}: expected a non-empty tuple "
                "of non-empty camera names"
            )
        if len(set(self.camera_names)) != len(self.camera_names):
            raise ValueError(f"PolicyMetadata.camera_names={self.camera_names!r}: duplicate names")
        if len(size) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size
        ):
            raise ValueError(
                f"PolicyMetadata.image_size={self.image_size!r}: expected (height, width) of "
                "positive ints"
            )
        for name in ("state_dim", "action_dim", "chunk_size", "n_obs_steps"):
            _positive_int(name, getattr(self, name))
        if self.n_action_steps is not None:
            _positive_int("n_action_steps", self.n_action_steps)
            if self.n_action_steps > self.chunk_size:
                raise ValueError(
                    f"PolicyMetadata.n_action_steps={self.n_action_steps}: expected <= "
                    f"chunk_size={self.chunk_size}"
                )

    def observation_spec(self) -> ObservationSpec:
        """The raw-observation check matching this policy (images of any size are accepted)."""
        return ObservationSpec(camera_names=self.camera_names, state_dim=self.state_dim)

    def check_compatible(
        self,
        *,
        camera_names: Any = None,
        state_dim: int | None = None,
        action_dim: int | None = None,
        where: str = "environment",
    ) -> None:
        """Refuse a policy that cannot run against `where` (an env, a robot): raise ValueError
        naming the field, the policy's value and what `where` offers. Arguments left None are
        not checked. The environment may offer more cameras than the policy uses."""
        problems = []
        if camera_names is not None:
            missing = [c for c in self.camera_names if c not in tuple(camera_names)]
            if missing:
                problems.append(
                    f"camera_names: the policy needs {list(self.camera_names)} but the {where} "
                    f"offers {list(camera_names)} (missing {missing})"
                )
        if state_dim is not None and state_dim != self.state_dim:
            problems.append(f"state_dim: the policy expects {self.state_dim}, the {where} gives {state_dim}")
        if action_dim is not None and action_dim != self.action_dim:
            problems.append(
                f"action_dim: the policy produces {self.action_dim}, the {where} takes {action_dim}"
            )
        if problems:
            raise ValueError(f"policy does not match the {where}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (lists instead of tuples)."""
        out = dataclasses.asdict(self)
        out["camera_names"] = list(self.camera_names)
        out["image_size"] = list(self.image_size)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyMetadata:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"PolicyMetadata: unknown fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)
