"""Every random stream of a run is seeded by (seed, step, stream), so a resumed run replays the same draws."""

import hashlib


def step_seed(seed: int, step: int, stream: int) -> int:
    """The seed of stream `stream` (0: problems, 1: rollouts, 2: the random-reward control) at `step`."""
    return (seed * 1_000_003 + step * 97 + stream) % (2**31 - 1)


def round_seed(seed: int, step: int, round_: int, stream: int) -> int:
    """The seed of stream `stream` (0: problems, 1: rollouts) in sampling round `round_` of `step` (dynamic
    sampling, trainer._dynamic_sampling). Round 0 is the step's ordinary draw, step_seed(seed, step, stream); a
    later round hashes (seed, step, round, stream), so its streams can never coincide with another step's or
    another round's (step_seed's `step * 97 + stream` would, past stream 96)."""
    if round_ == 0:
        return step_seed(seed, step, stream)
    digest = hashlib.sha256(f"scpo_lab/round/{seed}/{step}/{round_}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)
