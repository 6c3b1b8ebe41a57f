"""Every random stream of a run is seeded by (seed, step, stream), so a resumed run replays the same draws."""


def step_seed(seed: int, step: int, stream: int) -> int:
    """The seed of stream `stream` (0: problems, 1: rollouts, 2: the random-reward control) at `step`."""
    return (seed * 1_000_003 + step * 97 + stream) % (2**31 - 1)
