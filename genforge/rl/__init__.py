"""Reinforcement-learning machinery apart from the algorithms (stable-baselines3's split):
the agents' networks and losses live in genforge/models (dqn.py, policy.py), the recipe
genforge/recipes/reinforce.py glues them to this package.

  envs.py      make_env / EnvSpec (one gymnasium environment, clear errors), EnvPool
               (n environments stepped in lockstep with automatic reset)
  buffers.py   ReplayBuffer (uniform ring buffer of transitions, saved on resume)
  rollout.py   Collector (acting state of a run) and the three experience streams:
               replay samples (DQN), fixed-length rollouts (A2C), whole episodes (REINFORCE)
  evaluate.py  greedy policies, the batched episode runner behind evaluation and `genforge
               play`, GIF rendering, the returns plot
"""
