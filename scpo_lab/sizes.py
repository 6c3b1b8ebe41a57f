"""How big the report set's runs and evaluations are on each profile: one definition, so the notebooks share (and
cache) identical runs. The profiles' training defaults themselves are in config.PROFILE_DEFAULTS."""

from __future__ import annotations

import os

from scpo_lab.checks import one_of

PROFILES = ("smoke", "cpu", "gpu")


# Held-out evaluation sizes per profile: problems x samples per problem (pass@1 interval is over problems).
EVAL_SETTINGS: dict[str, dict] = {
    "smoke": {"n_problems": 4, "n_samples": 2, "batch_prompts": 4},
    # the default task has 131 test problems distinct up to commutation (168 expressions)
    "cpu": {"n_problems": 128, "n_samples": 8, "batch_prompts": 8},
    "gpu": {"n_problems": 500, "n_samples": 8, "batch_prompts": 64},
}


# Multi-arm, multi-seed comparisons (notebooks 01, 02, ...): smaller runs than a single quickstart run, so that
# every arm x seed fits the cpu report budget; one definition, so the notebooks share (and cache) identical runs.
COMPARISON_SIZES: dict[str, dict] = {
    "smoke": {"steps": 2, "save_every": 1},
    # cpu: 8 steps x 2 prompts x G=8 (128 rollouts a run; 3 prompts where the set trains in bf16 on AMX, BF16_LARGER
    # below): 3 headline arms x 5 seeds, 12 screen arms x 1 seed and GRPO at scpo-sequence's FLOPs x 5 seeds on
    # arithmetic, GSM8K, the group-size sweep and every evaluation fit the 90-minute cold budget of the report set
    # on 2 cores (README "Scale profiles and budgets")
    "cpu": {"steps": 8, "prompts_per_step": 2, "group_size": 8, "max_new_tokens": 32, "save_every": 4},
    "gpu": {"steps": 100, "save_every": 25},
}

# The report set's precision on the cpu profile: `auto` by default (bf16 where the host has AMX-BF16, or AVX512-BF16
# measured faster; fp32 elsewhere: scpo_lab.precision.resolve), or what this variable says (fp32 | bf16 | auto).
# Every report run trains in it; held-out evaluations stay fp32 in both, so pass@1 is scored the same way.
REPORT_PRECISION_ENV = "SCPO_LAB_REPORT_PRECISION"
# Where the report set runs bf16, it spends the speed on larger runs, not a shorter wall-clock (issue 20, item 5):
# 3 prompts a step instead of 2 (192 rollouts a run, 1.5x), within the same 90-minute cold budget (README "Scale
# profiles and budgets"). Measured on the AMX host (README "Precision", 2026-12-02), one comparison-size run each:
# grpo 49.3 s in bf16 at 3 prompts vs 50.2 s in fp32 at 2 (median s/step: generation 1.95 vs 2.59, update 3.66 vs
# 3.09), scpo-sequence 55.0 vs 56.8 s. Prompts rather than steps: 24 rows decode in fewer seconds than 16 did in fp32.
BF16_LARGER: dict[str, dict] = {"cpu": {"prompts_per_step": 3}}
# ...and only on the bf16 hardware where that was measured to pay for itself: AMX (the larger set took 59 min 35 s
# cold against the fp32 set's 77 min 14 s on the same host). Where `auto` picks bf16 without AMX (AVX512-BF16 with
# F.linear measured >= 1.3x faster, precision.resolve), a whole GRPO step measured 1.23x faster (AMD EPYC, README
# "Precision"), short of the 1.5x rollouts: the runs keep the fp32 set's sizes there, in bf16 (runs_larger).
# 100 problems x 2 samples: pass@1's bootstrap interval is over problems, so samples per problem add little
COMPARISON_EVAL: dict[str, dict] = {"cpu": {"n_problems": 100, "n_samples": 2, "batch_prompts": 25}}


# GSM8K with the embedded model: nearly every group is all-fail. Short runs that measure the training signal (which
# groups a critic rescues, what it rewards), not accuracy; shared by notebooks 01 and 05 so identical arms are cached.
COLLAPSE_SIZES: dict[str, dict] = {
    "smoke": {"steps": 2},
    "cpu": {"steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 96, "micro_batch_size": 4},
    "gpu": {"steps": 20},
}
# Their held-out evaluation (GSM8K test split), where a notebook evaluates them: the embedded model solves ~4%.
COLLAPSE_EVAL: dict[str, dict] = {
    "smoke": {"n_problems": 4, "n_samples": 2, "batch_prompts": 4},
    "cpu": {"n_problems": 50, "n_samples": 2, "batch_prompts": 10},
    "gpu": {"n_problems": 500, "n_samples": 4, "batch_prompts": 64},
}


def report_precision(profile: str) -> str | None:
    """The precision the report set's runs train in on this host: 'fp32' or 'bf16' on the cpu profile (see
    REPORT_PRECISION_ENV), None elsewhere (smoke pins fp32; the gpu profile keeps its own `auto`)."""
    one_of("profile", profile, PROFILES)
    if profile != "cpu":
        return None
    from scpo_lab import precision  # torch: imported only when a cpu report size is asked for

    asked = os.environ.get(REPORT_PRECISION_ENV, "auto")
    one_of(REPORT_PRECISION_ENV, asked, precision.PRECISIONS)
    return precision.resolve(asked, "cpu")


def runs_larger(resolved: str | None) -> bool:
    """True where the report set's comparison runs in `resolved` (report_precision's value) are the larger bf16 runs
    (BF16_LARGER): bf16 on AMX, the hardware measured to pay for them (precision.amx_in_use)."""
    from scpo_lab import precision

    return resolved == "bf16" and precision.amx_in_use()


def _in_report_precision(profile: str, sizes: dict, larger: dict) -> dict:
    resolved = report_precision(profile)
    if resolved is None:
        return sizes
    return sizes | (larger.get(profile, {}) if runs_larger(resolved) else {}) | {"precision": resolved}


def collapse_sizes(profile: str) -> dict:
    """Run size overrides of the GSM8K collapse-accounting runs on this profile, in the report precision (their
    sizes stay: they measure the training signal, not accuracy)."""
    one_of("profile", profile, PROFILES)
    return _in_report_precision(profile, dict(COLLAPSE_SIZES[profile]), {})


def collapse_eval(profile: str) -> dict:
    """Held-out evaluation settings of the GSM8K collapse-accounting runs on this profile."""
    one_of("profile", profile, PROFILES)
    return dict(COLLAPSE_EVAL[profile])


def comparison_settings(profile: str) -> tuple[dict, dict]:
    """(run size overrides, evaluation settings) of a comparison notebook on this profile: the run sizes in the
    report precision (report_precision), larger where that is bf16 on AMX (runs_larger)."""
    one_of("profile", profile, PROFILES)
    sizes = _in_report_precision(profile, dict(COMPARISON_SIZES[profile]), BF16_LARGER)
    return sizes, comparison_eval(profile)


def comparison_eval(profile: str) -> dict:
    """The held-out evaluation settings of a comparison notebook on this profile (either precision: fp32)."""
    one_of("profile", profile, PROFILES)
    return dict(COMPARISON_EVAL.get(profile, EVAL_SETTINGS[profile]))


def eval_settings(profile: str) -> dict:
    one_of("profile", profile, PROFILES)
    return dict(EVAL_SETTINGS[profile])
