"""Language conditions of `vla eval`: rewrites files, swapped and blank instructions, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from envs.instruction_rewrites import rewrites
from training.eval_protocol import EvalProtocol
from training.eval_report import language_summary, markdown_table, other_task_summary, summarize
from training.evaluate import EpisodeJob, EpisodeResult, plan_jobs, run_episode
from training.instruction_modes import episode_instruction, load_rewrites

REPO_ROOT = Path(__file__).resolve().parents[2]
HELDOUT_DIR = REPO_ROOT / "docs" / "language"
OBJECT_INSTRUCTIONS = [f"pick up the {o} and place it in the basket" for o in (
    "alphabet soup", "cream cheese", "salad dressing", "bbq sauce", "ketchup", "tomato sauce",
    "butter", "milk", "chocolate pudding", "orange juice")]
GOAL_INSTRUCTIONS = [
    "open the middle drawer of the cabinet", "put the bowl on the stove",
    "put the wine bottle on top of the cabinet", "open the top drawer and put the bowl inside",
    "put the bowl on top of the cabinet", "push the plate to the front of the stove",
    "put the cream cheese in the bowl", "turn on the stove", "put the bowl on the plate",
    "put the wine bottle on the rack"]
SUITE_INSTRUCTIONS = {"libero_object": OBJECT_INSTRUCTIONS, "libero_goal": GOAL_INSTRUCTIONS}


def _write(tmp_path, data) -> Path:
    path = tmp_path / "rewrites.json"
    path.write_text(json.dumps(data))
    return path


def test_rewrites_file_formats_and_refusals(tmp_path):
    plain = load_rewrites(_write(tmp_path, {"0": "grab it", "1": ["a", {"text": "b", "kind": "synonym"}]}),
                          "libero_object", (0, 1))
    assert plain == ((0, (("grab it", "rewrite"),)), (1, (("a", "rewrite"), ("b", "synonym"))))
    wrapped = load_rewrites(_write(tmp_path, {"suite": "libero_object", "provenance": "x",
                                              "instructions": {"0": ["grab it"]}}), "libero_object", (0,))
    assert wrapped == ((0, (("grab it", "rewrite"),)),)
    cases = [
        ({"0": ["a"]}, (0, 1), "no rewrites for task(s) [1]"),
        ({"zero": ["a"]}, (0,), "key 'zero' is not a task id"),
        ({"0": [""]}, (0,), "['0'][0]"),
        ({"0": []}, (0,), "non-empty list"),
        ({"0": [{"text": "a", "kind": 3}]}, (0,), ".kind = 3"),
        ({"suite": "libero_goal", "instructions": {"0": ["a"]}}, (0,), "written for suite 'libero_goal'"),
        ([1, 2], (0,), "expected a JSON object"),
    ]
    for data, task_ids, message in cases:
        with pytest.raises(ValueError, match=None) as error:
            load_rewrites(_write(tmp_path, data), "libero_object", task_ids)
        assert message in str(error.value), (data, str(error.value))
    with pytest.raises(ValueError, match="no such file"):
        load_rewrites(tmp_path / "missing.json", "libero_object", (0,))


def test_episode_instruction_per_mode():
    instructions = dict(enumerate(OBJECT_INSTRUCTIONS))
    table = {3: (("grab the bbq sauce", "phrasing"), ("the barbecue sauce", "synonym"))}
    assert episode_instruction("original", 3, 0, 10, table, instructions).text is None
    blank = episode_instruction("blank", 3, 5, 10, table, instructions)
    assert (blank.text, blank.kind) == ("", "blank")
    given = [episode_instruction("rewrites", 3, k, 10, table, instructions) for k in range(4)]
    assert [g.text for g in given] == ["grab the bbq sauce", "the barbecue sauce"] * 2
    assert [g.kind for g in given] == ["phrasing", "synonym"] * 2
    # Swapped: never the scene's own task, and 9 episodes visit each other task once.
    named = [episode_instruction("swapped", 3, k, 10, table, instructions).named_task for k in range(9)]
    assert sorted(named) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    swapped = episode_instruction("swapped", 3, 0, 10, table, instructions)
    assert swapped.text == instructions[swapped.named_task] and swapped.kind == "swapped"


def test_protocol_records_the_condition_and_refuses_inconsistent_ones():
    protocol = EvalProtocol(suite="libero_object", task_ids=(0,), instruction_mode="rewrites",
                            rewrites=((0, (("grab it", "phrasing"),)),))
    record = protocol.to_dict()
    assert record["instruction_mode"] == "rewrites"
    assert record["rewrites"] == {"0": [{"text": "grab it", "kind": "phrasing"}]}
    with pytest.raises(ValueError, match="exactly when the mode is 'rewrites'"):
        EvalProtocol(suite="libero_object", task_ids=(0,), instruction_mode="rewrites")
    with pytest.raises(ValueError, match="instruction_mode='loud'"):
        EvalProtocol(suite="libero_object", task_ids=(0,), instruction_mode="loud")
    with pytest.raises(ValueError, match=r"none for task\(s\) \[1\]"):
        EvalProtocol(suite="libero_object", task_ids=(0, 1), instruction_mode="rewrites",
                     rewrites=((0, (("grab it", "phrasing"),)),))


@pytest.mark.parametrize("suite", sorted(SUITE_INSTRUCTIONS))
def test_heldout_rewrites_share_nothing_with_the_training_rewrites(suite):
    instructions = SUITE_INSTRUCTIONS[suite]
    heldout = load_rewrites(HELDOUT_DIR / f"heldout_rewrites_{suite}.json", suite, tuple(range(10)))
    training = {r.text for instruction in instructions for r in rewrites(instruction)}
    given = {text for _, variants in heldout for text, _ in variants}
    assert len(given) == 100 and not given & training
    assert not given & set(instructions)
    kinds = {kind for _, variants in heldout for _, kind in variants}
    assert kinds == {"phrasing", "synonym"}


def _result(task, episode, success, kind="phrasing", named=None, variant=None):
    return EpisodeResult(task_id=task, episode=episode, init_state=episode, seed=0, success=success,
                         steps=10, policy_calls=10, wall_s=1.0, instruction=f"text {variant}",
                         variant=variant or kind, kind=kind, named_task=None if named is None else 1,
                         named_success=named)


def test_summary_breaks_success_down_by_kind_variant_and_named_task():
    results = [_result(0, 0, True, "phrasing", variant="rewrite 0"),
               _result(0, 1, False, "synonym", variant="rewrite 1"),
               _result(0, 2, True, "phrasing", variant="rewrite 0")]
    summary = language_summary(results, "rewrites")
    by_kind = {k["kind"]: (k["successes"], k["episodes"]) for k in summary["by_kind"]}
    assert by_kind == {"phrasing": (2, 2), "synonym": (0, 1)} and summary["named"] is None
    protocol = EvalProtocol(suite="libero_object", task_ids=(0,), episodes_per_task=3,
                            instruction_mode="rewrites", rewrites=((0, (("a", "phrasing"), ("b", "synonym"))),))
    full = summarize(results, protocol, {"kind": "test"}, {0: "orig"}, 1.0)
    variants = {v["variant"]: (v["successes"], v["episodes"]) for v in full["tasks"][0]["variants"]}
    assert variants == {"rewrite 0": (2, 2), "rewrite 1": (0, 1)}
    assert "| 0 | rewrite 1 | synonym |" in markdown_table(full)

    swapped = [_result(0, 0, False, "swapped", named=True), _result(0, 1, True, "swapped", named=False),
               _result(0, 2, False, "swapped", named=None)]
    named = language_summary(swapped, "swapped")["named"]
    assert (named["successes"], named["episodes"]) == (1, 2)  # the uncheckable episode is left out


def test_failures_that_did_another_task_are_counted_apart_from_the_rest():
    import dataclasses
    results = [dataclasses.replace(_result(0, 0, False, "original"), other_completed=[4]),
               dataclasses.replace(_result(0, 1, False, "original"), other_completed=[]),
               dataclasses.replace(_result(0, 2, False, "original"), other_completed=[4, 7]),
               _result(0, 3, False, "original"),  # a journal from before it was recorded
               _result(0, 4, True, "original")]
    instead = other_task_summary(results)
    assert instead == {"failed_checked": 3, "other_task_completed": 2,
                       "completed_task_counts": {"4": 2, "7": 1}}
    protocol = EvalProtocol(suite="libero_object", task_ids=(0,), episodes_per_task=5)
    table = markdown_table(summarize(results, protocol, {"kind": "test"}, {0: "orig"}, 1.0))
    assert "completed another task of the suite instead (e.g. the wrong object placed): 2 of 3." in table
    assert other_task_summary([_result(0, 0, True, "original")]) is None


class ExpertOfAnotherTask:
    """The scripted expert, solving the goal of another task in this scene."""

    def __init__(self, env, atoms):
        from envs.experts import make_expert
        from envs.experts.goal import goal_from_atoms

        self.expert = make_expert(env)
        problem = env.libero_env.env
        self.goal = goal_from_atoms(atoms, list(problem.objects_dict) + list(problem.fixtures_dict))

    def infer(self, obs):
        return {"actions": np.asarray(self.expert.act(obs), dtype=np.float32)[None]}  # (1, 7)

    def reset(self):
        self.expert.goal = self.goal
        self.expert.reset()


@pytest.mark.sim
def test_runner_records_which_other_task_a_failed_episode_completed():
    import dataclasses

    import envs

    protocol = EvalProtocol(suite="libero_object", task_ids=(0,), episodes_per_task=1, image_size=32)
    job = plan_jobs(protocol)[0]
    assert [t for t, _ in job.other_goals] == list(range(1, 10))  # every other task, not its own
    env = envs.make_libero_env("libero_object", 0, image_size=32, renderer="fast")
    try:
        env.reset(options={"init_state": 0})
        # Another task whose object this scene holds: the wrong object, put in the basket.
        other, atoms = next((t, g) for t, g in job.other_goals if env.goal_reached(g) is not None)
        result = run_episode(env, ExpertOfAnotherTask(env, atoms), protocol, job)
        assert result.error is None and not result.success
        assert result.other_completed == [other]
        idle = run_episode(env, RecordingPolicy(), dataclasses.replace(protocol, max_steps=2), job)
        assert idle.other_completed == []  # checked, and nothing done
    finally:
        env.close()


class RecordingPolicy:
    """Returns the settle no-op and records each instruction it is given."""

    def __init__(self):
        self.seen = []

    def infer(self, obs):
        self.seen.append(obs["task"])
        return {"actions": np.array([[0.0] * 6 + [-1.0]], dtype=np.float32)}

    def reset(self):
        pass


@pytest.mark.sim
def test_runner_gives_the_condition_s_instruction_and_checks_the_named_goal():
    import envs
    from envs.bddl import goal_atoms
    from envs.suites import task_info

    env = envs.make_libero_env("libero_object", 0, image_size=32, renderer="fast")
    try:
        protocol = EvalProtocol(suite="libero_object", task_ids=(0,), episodes_per_task=9,
                                image_size=32, max_steps=2, instruction_mode="swapped")
        jobs = plan_jobs(protocol)
        assert [j.named_task for j in jobs] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
        objects = set(env.libero_env.env.object_states_dict)
        for job in jobs[:2]:
            policy = RecordingPolicy()
            result = run_episode(env, policy, protocol, job)
            assert result.error is None
            assert set(policy.seen) == {task_info("libero_object", job.named_task).instruction}
            assert result.instruction == policy.seen[0] and result.kind == "swapped"
            named_object = goal_atoms(task_info("libero_object", job.named_task).bddl_file)[0][1]
            # Checkable exactly when the scene has the named object; not reached by no-ops.
            assert result.named_success == (False if named_object in objects else None)
        # The scene's own goal, read from its BDDL, agrees with LIBERO's success check.
        own = goal_atoms(task_info("libero_object", 0).bddl_file)
        assert env.goal_reached(own) is False
        assert env.goal_reached([["in", "no_such_object_1", "basket_1_contain_region"]]) is None

        policy = RecordingPolicy()
        original = run_episode(env, policy, EvalProtocol(suite="libero_object", task_ids=(0,),
                                                         episodes_per_task=1, image_size=32,
                                                         max_steps=1), EpisodeJob(0, 0))
        assert original.instruction == env.instruction == policy.seen[0]
        assert original.named_success is None and original.variant == "original"
    finally:
        env.close()


def test_eval_table_pairs_runs_on_the_same_starts(tmp_path, capsys):
    import dataclasses

    import vla_cli

    def record(results, mode):
        return {"protocol": {"instruction_mode": mode}, "episodes": [dataclasses.asdict(r) for r in results]}

    original = record([_result(t, k, k < 9, "original") for t in range(2) for k in range(50)], "original")
    rewrites = record([_result(t, k, k % 2 == 0, "phrasing" if k % 2 == 0 else "synonym") for t in range(2)
                       for k in range(10)], "rewrites")
    swapped = record([_result(t, k, False, "swapped", named=k < 3) for t in range(2) for k in range(10)], "swapped")
    paths = {}
    for name, data in (("original", original), ("rewrites", rewrites), ("swapped", swapped)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    out = tmp_path / "table.md"
    code = vla_cli.main(["eval-table", *(f"{k}={v}" for k, v in paths.items()), "--episodes-per-task", "10",
                         "--out", str(out)])
    assert code == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    by = {(r["label"], r["kind"]): r for r in rows}
    assert (by["original", "all"]["successes"], by["original", "all"]["episodes"]) == (18, 20)  # episodes 0-9 only
    assert (by["rewrites", "phrasing"]["successes"], by["rewrites", "synonym"]["successes"]) == (10, 0)
    assert (by["swapped", "all"]["named"]["successes"], by["swapped", "all"]["named"]["episodes"]) == (6, 20)
    assert "| swapped | swapped | all | 0/20 = 0% (0-16%) | 6/20 = 30% (15-52%) |" in out.read_text()
    assert vla_cli.main(["eval-table", "nolabel"]) == 2
    assert "expected LABEL=PATH" in capsys.readouterr().err


@pytest.mark.sim
def test_vla_eval_blank_mode_and_token_budget_on_a_checkpoint(tmp_path):
    """`vla eval` on a (tiny, untrained) checkpoint: the blank condition reaches the policy as an
    explicitly allowed empty instruction, and the token budget is applied and recorded."""
    import torch

    import vla_cli
    from vla import VLAModel, presets

    config = presets.get("tiny")
    unit = {"q01": [-1.0] * 8, "q99": [1.0] * 8}
    torch.manual_seed(0)
    VLAModel(config, {"observation.state": unit, "action": {"q01": [-1.0] * 7, "q99": [1.0] * 7}}
             ).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "eval"
    code = vla_cli.main(["eval", "--policy", str(tmp_path / "ckpt"), "--suite", "libero_object",
                         "--tasks", "0", "--episodes-per-task", "1", "--workers", "0", "--max-steps", "2",
                         "--instruction-mode", "blank", "--token-budget", "0.5", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["policy"]["token_budget"] == 0.5 and results["policy"]["allow_blank_instruction"]
    assert results["protocol"]["instruction_mode"] == "blank"
    episode = results["episodes"][0]
    assert episode["error"] is None and episode["instruction"] == "" and episode["kind"] == "blank"
    assert episode["steps"] == 2
    assert vla_cli.main(["eval", "--policy", str(tmp_path / "ckpt"), "--suite", "libero_object",
                         "--token-budget", "0", "--out", str(out)]) == 2
