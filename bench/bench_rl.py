"""CartPole-v1: env steps and wall time until the greedy policy first reaches a mean return
>= 475 over 100 evaluation episodes, for genforge's DQN and A2C presets and for
stable-baselines3's DQN with the rl-baselines3-zoo CartPole-v1 hyperparameters.

    python bench/bench_rl.py                       # all three, seed 0
    python bench/bench_rl.py --seeds 0,1,2 --only genforge-dqn,sb3-dqn
    python bench/bench_rl.py --seeds 0,1,2 --only genforge-a2c --to-end   # best and last policy

Every agent is evaluated with the same code (genforge.recipes.reinforce.run_episodes: the
same 100 episode seeds, deterministic actions) every `--eval-every` env steps; evaluation
time is excluded from the wall time of every agent. genforge runs the recipe's own loop
(batches -> update, what the trainer calls each step) without the trainer's logging and
checkpointing. stable-baselines3 is needed only here: `pip install stable-baselines3
torch==2.13.0`.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from genforge import config as C
from genforge.recipes import get_recipe

rl = get_recipe("reinforce")
THRESHOLD = 475.0

# rl-baselines3-zoo hyperparams/dqn.yml, CartPole-v1 (n_envs 1, 5e4 steps in the zoo)
SB3_DQN_ZOO = dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000,
                   gamma=0.99, target_update_interval=10, train_freq=256, gradient_steps=128,
                   exploration_fraction=0.16, exploration_final_eps=0.04,
                   policy_kwargs=dict(net_arch=[256, 256]))


def _evaluator(cfg, episodes: int):
    seeds = rl._eval_seeds(cfg, "test", episodes)  # the same episodes for every agent

    def evaluate(policy) -> float:
        returns, _ = rl.run_episodes(policy, cfg, seeds)
        return float(returns.mean())

    return evaluate


def run_genforge(preset: str, seed: int, budget: int, eval_every: int, episodes: int,
                 to_end: bool = False) -> dict:
    """Train until the greedy policy solves the task, or with `to_end` for the preset's whole
    budget (its max_steps) and also report the best evaluation and the final policy's return
    (what the run's last.safetensors holds), as the trainer applies the preset's LR schedule."""
    cfg = C.make_config(rl, {**rl.PRESETS[preset][0], "seed": seed})
    if to_end:
        return _run_to_end(cfg, eval_every, episodes)
    evaluate = _evaluator(cfg, episodes)
    torch.manual_seed(seed)
    model = rl.build(cfg)
    opts = rl.optimizers(model, cfg)
    stream = rl.batches(cfg, "train", 0, model=model)
    policy = rl.greedy_policy(model)
    train_s, step, next_eval, curve = 0.0, 0, eval_every, []
    while True:
        t0 = time.perf_counter()
        rl.update(model, next(stream), opts, step, cfg)
        train_s += time.perf_counter() - t0
        step += 1
        env_steps = model.collector.env_steps
        if env_steps >= next_eval:
            next_eval += eval_every
            model.eval()
            ret = evaluate(policy)
            model.train()
            curve.append((env_steps, ret))
            if ret >= THRESHOLD:
                return {"solved_at": env_steps, "train_s": train_s, "curve": curve}
        if env_steps >= budget:
            return {"solved_at": None, "train_s": train_s, "curve": curve}


def _run_to_end(cfg, eval_every: int, episodes: int) -> dict:
    from genforge.train.optim import make_scheduler

    evaluate = _evaluator(cfg, episodes)
    torch.manual_seed(cfg.seed)
    model = rl.build(cfg)
    opts = rl.optimizers(model, cfg)
    scheds = [make_scheduler(o, cfg, cfg.max_steps) for o in opts.values()]
    stream = rl.batches(cfg, "train", 0, model=model)
    policy = rl.greedy_policy(model)
    train_s, next_eval, curve, solved = 0.0, eval_every, [], None
    for step in range(cfg.max_steps):
        t0 = time.perf_counter()
        rl.update(model, next(stream), opts, step, cfg)
        for s in scheds:
            s.step()
        train_s += time.perf_counter() - t0
        if model.collector.env_steps >= next_eval or step == cfg.max_steps - 1:
            next_eval += eval_every
            model.eval()
            ret = evaluate(policy)
            model.train()
            curve.append((model.collector.env_steps, ret))
            if ret >= THRESHOLD and solved is None:
                solved = model.collector.env_steps
    return {"solved_at": solved, "train_s": train_s, "curve": curve,
            "best": max(r for _, r in curve), "last": curve[-1][1]}


def run_sb3_dqn(seed: int, budget: int, eval_every: int, episodes: int) -> dict:
    import gymnasium as gym
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    cfg = C.make_config(rl, {"data": "CartPole-v1", "seed": seed})
    evaluate = _evaluator(cfg, episodes)

    class Probe(BaseCallback):
        def __init__(self):
            super().__init__()
            self.eval_s, self.solved_at, self.curve = 0.0, None, []

        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every:
                return True
            t0 = time.perf_counter()
            ret = evaluate(lambda obs: torch.as_tensor(
                self.model.predict(obs.cpu().numpy(), deterministic=True)[0]))
            self.eval_s += time.perf_counter() - t0
            self.curve.append((self.num_timesteps, ret))
            if ret >= THRESHOLD:
                self.solved_at = self.num_timesteps
                return False
            return True

    model = DQN("MlpPolicy", gym.make("CartPole-v1"), seed=seed, device="cpu", verbose=0, **SB3_DQN_ZOO)
    probe = Probe()
    t0 = time.perf_counter()
    model.learn(total_timesteps=budget, callback=probe)
    total = time.perf_counter() - t0
    return {"solved_at": probe.solved_at, "train_s": total - probe.eval_s, "curve": probe.curve}


AGENTS = {
    "genforge-dqn": ("genforge dqn-cartpole", lambda s, b, e, n: run_genforge("dqn-cartpole", s, b, e, n), 50_000),
    "genforge-a2c": ("genforge a2c-cartpole", lambda s, b, e, n: run_genforge("a2c-cartpole", s, b, e, n), 100_000),
    "sb3-dqn": ("stable-baselines3 DQN (zoo)", run_sb3_dqn, 50_000),
}


PRESET_OF = {"genforge-dqn": "dqn-cartpole", "genforge-a2c": "a2c-cartpole"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--only", default=",".join(AGENTS), help="comma-separated: " + ", ".join(AGENTS))
    ap.add_argument("--budget", type=int, default=100_000, help="max env steps (DQN); A2C gets 1.5x")
    ap.add_argument("--eval-every", type=int, default=2000, help="env steps between evaluations")
    ap.add_argument("--episodes", type=int, default=100, help="evaluation episodes")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (all agents)")
    ap.add_argument("--to-end", action="store_true", help="genforge agents: train the preset's "
                    "whole budget and print the best evaluation and the final policy's return")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    try:
        import stable_baselines3
        sb3 = stable_baselines3.__version__
    except ImportError:
        sb3 = None
    print(f"# CartPole-v1: env steps to a mean return >= {THRESHOLD:.0f} over {args.episodes} "
          f"greedy episodes (evaluated every {args.eval_every} env steps)")
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
          f"torch {torch.__version__}, stable-baselines3 {sb3}; CPU shared with other jobs")
    print(f"{'agent':<30} {'seed':>4} {'env steps to 475':>17} {'target':>7} {'wall s (no eval)':>17}  last evals")
    rows: dict[str, list[dict]] = {}
    for key in args.only.split(","):
        name, fn, target = AGENTS[key]
        if key.startswith("sb3") and sb3 is None:
            print(f"{name:<30} skipped: pip install stable-baselines3 torch=={torch.__version__.split('+')[0]}")
            continue
        budget = args.budget if "dqn" in key else int(args.budget * 1.5)
        for seed in seeds:
            if args.to_end and key in PRESET_OF:
                r = run_genforge(PRESET_OF[key], seed, budget, args.eval_every, args.episodes, to_end=True)
            else:
                r = fn(seed, budget, args.eval_every, args.episodes)
            rows.setdefault(key, []).append(r)
            solved = f"{r['solved_at']}" if r["solved_at"] else f">{budget}"
            tail = " ".join(f"{s // 1000}k:{v:.0f}" for s, v in r["curve"][-4:])
            if "last" in r:
                tail = f"best {r['best']:.1f}  last {r['last']:.1f}  ({tail})"
            print(f"{name:<30} {seed:>4} {solved:>17} {target:>7} {r['train_s']:>17.1f}  {tail}", flush=True)
    print("\n# summary (median over seeds; unsolved runs count as the budget)")
    for key, rs in rows.items():
        name, _, target = AGENTS[key]
        steps = statistics.median([r["solved_at"] or float("inf") for r in rs])
        wall = statistics.median([r["train_s"] for r in rs])
        met = "met" if steps <= target else "MISSED"
        steps = "not reached" if steps == float("inf") else steps
        print(f"{name:<30} median env steps {steps:>11} (target <= {target}: {met}), "
              f"median wall {wall:.1f}s, solved {sum(r['solved_at'] is not None for r in rs)}/{len(rs)}")


if __name__ == "__main__":
    main()
