"""V3 `scpo-judge`: the policy as an LLM-as-judge of its own rollout, with privileged context.

Judge input = judging instruction + the problem + rollout y_i + the verifier's outcome and feedback
(judge_messages). The judge (the live policy, adapter on: judge.model = "policy"; or the frozen initial model,
adapter off: "base") writes a critique of at most max_critique_tokens tokens, then reads "Score: " and a digit
0..9. Two readings of the score s_i in [0, 1]:
    reading = "expected": s = sum_d d p(d) / (9 sum_d p(d)) over the digit tokens d at the forced
                          "\\nScore: " position after the critique (expected_score; parse-free: never fails)
    reading = "parsed":   the last score written in the critique ("Score: 7/10", "7 out of 10", "**7**"),
                          over its scale (parse_score); no score found -> fallback_score (a parse failure)
Advantage: A'_i = A_i + weight * (s_i - mean_g s) / 0.5, s_i the mean over `samples` judge samples, A_i the
verifier's group advantage (objective.critic_advantages: the score is not added to r_i before normalising, so in
a zero-std group it gives ~2 weight per unit of score, not +-1). The verifier stays ground truth while the score
term cannot close a group's pass-fail gap: under GRPO's scale that gap is 1 / (std_g r + 1e-4) >= 1.414 (the
largest std of 0/1 rewards, 1/sqrt(2), is at G = 2) and scores on [0, 1] move the term by at most 2 weight, so a
pass outranks every fail of its group whenever weight < 1/sqrt(2) ~ 0.707 (the default 0.5 does; under
scale_rewards "none" the gap is 1: weight < 0.5; a planted bonus widens the scores to [0, 1 + planted_bonus]).
Above that bound a confident judge can rank a fail over a pass (tests/test_faithful.py). The score is the part a
policy can exploit, so it is also the critic's score compared with the verifier each step (hack/*).
planted_phrase / planted_bonus: a deliberately exploitable judge for the reward-hacking check: s_i gets
+ planted_bonus whenever the rollout contains planted_phrase (whole words, case-insensitive). Off by default.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch

from scpo_lab import checks
from scpo_lab.critics.base import Critic, CriticResult, signal_stats
from scpo_lab.objective import critic_advantages
from scpo_lab.padding import pad_token_lists
from scpo_lab.rollout import RolloutBatch, encode_prompts, generate
from scpo_lab.stats import auroc
from scpo_lab.teacher import TeacherOutput, teacher_pass

MODELS = ("policy", "base")
READINGS = ("expected", "parsed")
SCORE_MAX = 9  # one token per score: the digits 0..9 (SmolLM2's and Qwen's tokenizers split numbers into digits)
SCORE_CUE = "\nScore: "
# What all rollouts of a problem share comes first, so the reading pass runs it once per group (teacher_pass).
JUDGE_INSTRUCTION = (
    "Grade a student's answer to this problem.\n\nProblem:\n{question}\n\nIn one or two sentences, say what is "
    "right or wrong in the student's answer, then end with 'Score: N', where N is from 0 (wrong) to 9 (fully "
    "correct).\n\nStudent's answer:\n{answer}\n\nAutomatic checker: {feedback}"
)



@dataclass
class JudgeConfig(checks.Section):
    """Options of scpo-judge (`judge.*`); the formulas are the module docstring's."""

    name = "judge"
    model: str = "policy"  # policy | base
    samples: int = 1  # judge samples per rollout
    max_critique_tokens: int = 32
    reading: str = "expected"  # expected | parsed
    weight: float = 0.5
    fallback_score: float = 0.5  # the parsed reading when no score is found
    temperature: float = 1.0
    planted_phrase: str = ""
    planted_bonus: float = 0.0

    def check(self) -> None:
        f = self.field_name
        checks.one_of(f("model"), self.model, MODELS)
        checks.one_of(f("reading"), self.reading, READINGS)
        checks.positive_int(f("samples"), self.samples)
        checks.positive_int(f("max_critique_tokens"), self.max_critique_tokens)
        checks.positive(f("weight"), self.weight, allow_zero=True)
        checks.positive(f("temperature"), self.temperature)
        checks.positive(f("planted_bonus"), self.planted_bonus, allow_zero=True)
        checks.unit_interval(f("fallback_score"), self.fallback_score)
        if not isinstance(self.planted_phrase, str):
            raise checks.ConfigError(f"{f('planted_phrase')}: got {self.planted_phrase!r}; must be a string ('' = no "
                                     "planted bias)")


# ------------------------------------------------------------------------------------------------ parsing

_NUM = r"(-?\d+(?:\.\d+)?)"
# "7/10", "7 / 10", "**7**/10", "7 out of 10": a ratio; only over the denominators a score is given on
_RATIO = re.compile(rf"{_NUM}\**\s*(?:/|out\s+of)\s*\**\s*(5|9|10|100)(?![\d.]*\d)", re.IGNORECASE)
# "Score: 7", "score = 7", "score of 7", "Score: **7**", "rating: 7"
_LABELLED = re.compile(rf"\b(?:score|rating|grade)\b\s*(?:is|of|=|:)?\s*\**\s*{_NUM}(?![\d/]|\s*out\s+of)",
                       re.IGNORECASE)
_BOLD = re.compile(rf"\*\*\s*{_NUM}\s*\*\*(?!\s*(?:/|out\s+of))", re.IGNORECASE)  # a bare "**7**"


def parse_score(text: str, scale: int = SCORE_MAX) -> float | None:
    """The last score written in `text`, as a fraction of its scale, or None (a parse failure).

    Read: "7/10" and "7 out of 10" (denominators 5, 9, 10, 100) as 7/10; "Score: 7", "score of 7", "**7**" as
    7/scale. The last mention wins ("Score: 3/10 ... final score: 8/10" -> 0.8). Out of range (negative, above
    the scale), no mention, or numbers that are not scores ("12 / 4 = 3") -> None.
    """
    if not isinstance(text, str):
        return None
    candidates = []  # (end position, numerator, denominator)
    for m in _RATIO.finditer(text):
        candidates.append((m.end(), float(m.group(1)), float(m.group(2))))
    for rx in (_LABELLED, _BOLD):
        for m in rx.finditer(text):
            candidates.append((m.end(), float(m.group(1)), float(scale)))
    if not candidates:
        return None
    _, value, denominator = max(candidates, key=lambda c: c[0])
    if not 0 <= value <= denominator:
        return None
    return value / denominator


def score_token_ids(tokenizer) -> list[int]:
    """Token id of each digit 0..9 as it follows SCORE_CUE; a clear error if a digit is not one token there."""
    cue = tokenizer(SCORE_CUE, add_special_tokens=False)["input_ids"]
    ids = []
    for d in range(SCORE_MAX + 1):
        full = tokenizer(SCORE_CUE + str(d), add_special_tokens=False)["input_ids"]
        if full[:len(cue)] != cue or len(full) != len(cue) + 1:
            raise ValueError(f"judge.reading: 'expected' needs each digit to be one token after {SCORE_CUE!r}; this "
                             "tokenizer splits it differently; use judge.reading = 'parsed'")
        ids.append(full[-1])
    return ids


def expected_score(digit_logprobs: torch.Tensor) -> torch.Tensor:
    """E[score] / SCORE_MAX from the judge's log-probs of the digits 0..9 at the score position [..., 10]:
    p(d) = exp(logp_d) / sum_d' exp(logp_d') (renormalised over the digits: mass on other tokens is ignored, the
    judge was asked for a digit), E = sum_d d p(d)."""
    p = torch.softmax(digit_logprobs.float(), dim=-1)
    values = torch.arange(digit_logprobs.shape[-1], dtype=p.dtype, device=p.device)
    return (p * values).sum(-1) / SCORE_MAX


# ------------------------------------------------------------------------------------------------ the judge

def judge_messages(prompt: list[dict], completion: str, verdict) -> list[dict]:
    """One user turn: the judging instruction around the problem, the rollout and the verifier's feedback."""
    question = [m for m in prompt if m["role"] == "user"][-1]["content"]
    return [{"role": "user", "content": JUDGE_INSTRUCTION.format(question=question, answer=completion.strip(),
                                                                 feedback=verdict.feedback)}]


def planted_bias(completions: list[str], phrase: str, bonus: float) -> torch.Tensor:
    """The exploitable judge's extra score: +bonus for every completion containing `phrase` (whole words,
    case-insensitive, as metrics.phrase_rates counts it)."""
    if not phrase or bonus == 0:
        return torch.zeros(len(completions))
    pattern = re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)", re.IGNORECASE)
    return torch.tensor([bonus if pattern.search(c) else 0.0 for c in completions])


class JudgeCritic(Critic):
    """scpo-judge: critique-then-score by the policy itself; no parameters beyond the policy's."""

    methods = ("scpo-judge",)
    Config = JudgeConfig
    presets = {"scpo-judge": {"method": "scpo-judge"},
               # an instrument check, not a method: the judge pays +1 for "answer" (in ~12% of the embedded model's
               # arithmetic completions), which the verifier ignores; every step's rollouts are kept to follow the
               # phrase's spread
               "scpo-judge-exploitable": {"method": "scpo-judge", "judge.planted_phrase": "answer",
                                          "judge.planted_bonus": 1.0, "samples_every": 1}}
    sequence_level = True

    def __init__(self, config, tokenizer=None, world=None):
        super().__init__(config, tokenizer, world)
        self.calls = 0  # judge calls so far: seeds each call's sampling, saved so a resumed run replays them
        self._digit_ids = None

    def score(self, policy, items: list, seed: int, group_size: int = 1) -> dict:
        """Judge (prompt, completion, verdict) items -> {"expected" [n, S], "parsed" [n, S] (nan = no score),
        "critiques" (n lists of S strings), "critique_tokens" [n, S], "bias" [n, 1], "tokens_read"};
        S = judge.samples. Items come in groups of `group_size` rollouts of one problem (their judge prompts share a
        prefix). "bias" is the planted bias (judge.planted_*), added to either reading by `reading`."""
        cfg, tok, model = self.config.judge, policy.tokenizer, policy.model
        if self._digit_ids is None:
            self._digit_ids = score_token_ids(tok)
        samples = cfg.samples
        generator = torch.Generator(device=policy.device).manual_seed(seed)
        cue = tok(SCORE_CUE, add_special_tokens=False)["input_ids"]
        eos = set(policy.eos_token_ids)
        parsed, critiques, sequences, read = [], [], [], 0
        was_training = model.training
        model.eval()
        weights_context = policy.reference() if cfg.model == "base" else contextlib.nullcontext()
        messages = [judge_messages(*item) for item in items]
        with weights_context, torch.no_grad():
            chunk = 64  # rows decoded together: distinct prompts share no prefix, so wide batches pay off
            for start in range(0, len(items), chunk):
                ids, mask = encode_prompts(tok, messages[start:start + chunk], policy.device)
                out_ids, out_mask, _, _ = generate(
                    model, ids, mask, repeats=samples, max_new_tokens=cfg.max_critique_tokens,
                    temperature=cfg.temperature, top_p=1.0, eos_token_ids=policy.eos_token_ids,
                    pad_token_id=tok.pad_token_id, generator=generator, engine=self.config.rollout_engine)
                read += int(mask.sum()) + int(out_mask.sum())
                for r in range(out_ids.shape[0]):
                    critique = [t for t in out_ids[r, :int(out_mask[r].sum())].tolist() if t not in eos]
                    text = tok.decode(critique, skip_special_tokens=True)
                    critiques.append(text)
                    score = parse_score(text)
                    parsed.append(float("nan") if score is None else score)
                    # the reading: critique + "\nScore: " + a placeholder digit whose position holds p(digit)
                    sequences.append(critique + cue + [self._digit_ids[0]])
            reading = _rollouts_of(sequences, tok.pad_token_id, group_size=samples * group_size)
            support = torch.tensor(self._digit_ids).expand(*reading.completion_ids.shape, -1)
            out = teacher_pass(policy, reading, None, messages=[m for m in messages for _ in range(samples)],
                               support_ids=support, micro_batch_size=self.config.micro_batch_size,
                               engine=self.config.rollout_engine)
            read += out.tokens_read
        model.train(was_training)
        last = reading.completion_mask.sum(1).long() - 1  # the placeholder's position
        digit_logprobs = out.dist_logprobs[torch.arange(len(sequences)), last]  # [n * S, 10]
        lengths = [len(s) - len(cue) - 1 for s in sequences]
        n = len(items)
        bias = planted_bias([c for _, c, _ in items], cfg.planted_phrase, cfg.planted_bonus)[:, None]
        return {"expected": expected_score(digit_logprobs).view(n, samples).cpu(),
                "parsed": torch.tensor(parsed).view(n, samples), "bias": bias,
                "critiques": [critiques[i * samples:(i + 1) * samples] for i in range(n)],
                "critique_tokens": torch.tensor(lengths, dtype=torch.float32).view(n, samples),
                "tokens_read": read}

    def reading(self, judged: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(s_i [n] in the configured reading, averaged over judge samples, plus the planted bias if any;
        parse failures [n, S] bool)."""
        cfg = self.config.judge
        failed = torch.isnan(judged["parsed"])
        if cfg.reading == "expected":
            scores = judged["expected"]
        else:
            scores = torch.where(failed, torch.full_like(judged["parsed"], cfg.fallback_score), judged["parsed"])
        return (scores + judged["bias"]).mean(1), failed

    def score_items(self, policy, items: list, seed: int = 0) -> list[float]:
        """The judge's score of each (prompt, completion, verdict): the signature metrics.judge_bias_probe wants."""
        return self.reading(self.score(policy, items, seed))[0].tolist()

    def teacher_pass(self, policy, batch, *, temperature: float, micro_batch_size: int):
        items = [(p.prompt, text, v) for p, text, v in zip(batch.problems, batch.texts, batch.verdicts)]
        self.calls += 1
        judged = self.score(policy, items, seed=self.config.seed * 1_000_003 + self.calls * 7919,
                            group_size=batch.group_size)
        scores, _ = self.reading(judged)
        extras = [{"critique": c[0] if len(c) == 1 else c, "judge_score": round(float(s), 4),
                   "judge_parsed": None if torch.isnan(p).all() else round(float(p.nanmean()), 4)}
                  for c, s, p in zip(judged["critiques"], scores, judged["parsed"])]
        return TeacherOutput(logprobs=None, tokens_read=judged["tokens_read"], extras=extras, critic_data=judged)

    def advantages(self, batch, group_advantages_, teacher, step: int = 0) -> CriticResult:
        cfg = self.config.judge
        scores, failed = self.reading(teacher.critic_data)
        passed = torch.tensor([bool(v.passed) for v in batch.verdicts])
        # A'_i = A_i + w (s_i - mean_g s) / CRITIC_SCALE: the verifier stays ground truth, w sets the judge's share
        advantages = critic_advantages(group_advantages_, scores, batch.group_size, cfg.weight)
        stats = signal_stats(advantages, batch.completion_mask, group_advantages_, batch.group_size, passed)
        stats.update({
            "judge/score_mean": float(scores.mean()),
            "judge/parse_failure_rate": float(failed.float().mean()),
            "judge/agreement": float(((scores > 0.5) == passed).float().mean()),  # judge's verdict = verifier's
            "judge/auroc": auroc(scores, passed),
            "judge/critique_length": float(teacher.critic_data["critique_tokens"].mean()),
        })
        return CriticResult(advantages, stats, score=scores, score_is_probability=True, sequence_reward=scores)

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state.get("calls", 0))


def _rollouts_of(sequences: list[list[int]], pad_token_id: int, group_size: int) -> RolloutBatch:
    """Token lists as the completions of a RolloutBatch, for teacher_pass to read after each row's context;
    rows come in groups of `group_size` whose contexts share a prefix (one rollout's judge samples, one
    problem's rollouts)."""
    ids, mask = pad_token_lists(sequences, pad_token_id, "cpu", left=False)
    n = len(sequences)
    size = group_size if n % group_size == 0 else 1
    return RolloutBatch(prompt_ids=ids[:, :0], prompt_mask=mask[:, :0], completion_ids=ids, completion_mask=mask,
                        logprobs=torch.zeros(ids.shape), texts=[""] * n, problems=[], group_ids=torch.arange(n) // size,
                        truncated=torch.zeros(n, dtype=torch.bool), group_size=size)


__all__ = ["JudgeCritic", "SCORE_MAX", "expected_score", "judge_messages", "parse_score", "planted_bias",
           "score_token_ids"]
