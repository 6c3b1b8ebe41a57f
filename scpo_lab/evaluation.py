"""Evaluate a policy on held-out problems: pass@1 and unbiased pass@k with bootstrap 95% intervals over problems."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from scpo_lab.metrics import reasoning_metrics
from scpo_lab.rollout import sample_rollouts
from scpo_lab.stats import pass_at_k, pass_at_k_table


@dataclass
class EvalResult:
    task: str
    split: str
    n_problems: int
    n_samples: int
    temperature: float
    max_new_tokens: int
    seed: int
    pass_at_1: float
    ci_low: float
    ci_high: float
    pass_at_k: list[dict]  # rows {k, pass_at_k, ci_low, ci_high}
    per_problem: list[dict] = field(repr=False)  # rows {problem_id, n, correct}
    mean_length: float = 0.0
    truncated: float = 0.0
    samples: list[dict] = field(default_factory=list, repr=False)  # a few (problem, completion, passed) examples
    reasoning: dict = field(default_factory=dict)  # metrics.reasoning_metrics over every sample ({} in old caches)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.task}/{self.split}: pass@1 = {self.pass_at_1:.3f} "
                f"[{self.ci_low:.3f}, {self.ci_high:.3f}] over {self.n_problems} problems x {self.n_samples} samples")


@torch.no_grad()
def evaluate(policy, task, n_problems: int = 100, n_samples: int = 4, *, split: str = "test",
             max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 1.0, seed: int = 1234,
             batch_prompts: int = 8, ks: list[int] | None = None, progress: bool = True,
             keep_samples: int = 16, desc: str | None = None) -> EvalResult:
    """Sample `n_samples` completions for each of `n_problems` held-out problems and score them.

    pass@1 is the mean over problems of c_i / n (the unbiased pass@1); its interval is a percentile bootstrap
    over problems. pass@k for k in `ks` (default 1, 2, 4, ... up to n_samples) uses Chen et al.'s estimator.
    `reasoning` holds metrics.reasoning_metrics and token_entropy, the mean -log-prob of the sampled tokens
    (a Monte-Carlo estimate of the policy's per-token entropy on its own samples).
    desc: the progress bar's name (default "eval <task>"; run_experiment names the policy: "eval scpo-span/s1").
    """
    if n_problems < 1 or n_samples < 1:
        raise ValueError(f"evaluate: n_problems and n_samples must be >= 1, got {n_problems} and {n_samples}")
    problems = task.problems(split, n=n_problems, seed=seed)
    if not problems:
        raise ValueError(f"evaluate: task {task.name!r} has no {split!r} problems")
    chunks = [problems[i:i + batch_prompts] for i in range(0, len(problems), batch_prompts)]
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=desc or f"eval {task.name}", leave=False)
    per_problem, samples, lengths, truncated = [], [], [], []
    nll_sum, nll_tokens = 0.0, 0  # -log pi_sampler(y_t) over every sampled completion token
    texts, passed, answers = [], [], []  # per problem, for the reasoning metrics
    for i, chunk in enumerate(chunks):
        batch = sample_rollouts(policy, chunk, group_size=n_samples, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=top_p, seed=seed + i)
        lengths += batch.completion_mask.sum(1).tolist()
        truncated += batch.truncated.tolist()
        nll_sum -= float((batch.logprobs * batch.completion_mask).sum())
        nll_tokens += int(batch.completion_mask.sum())
        chunk_verdicts = task.verify_batch(batch.problems, batch.texts)  # code tasks: programs run in parallel
        for j, problem in enumerate(chunk):
            rows = range(j * n_samples, (j + 1) * n_samples)
            verdicts = [chunk_verdicts[r] for r in rows]
            per_problem.append({"problem_id": problem.id, "n": n_samples, "correct": sum(v.passed for v in verdicts)})
            texts.append([batch.texts[r] for r in rows])
            passed.append([bool(v.passed) for v in verdicts])
            answers.append([v.extracted for v in verdicts])
            if len(samples) < keep_samples:
                samples.append({"problem_id": problem.id, "prompt": problem.prompt[-1]["content"],
                                "completion": batch.texts[rows[0]], "passed": verdicts[0].passed,
                                "answer": problem.answer, "extracted": verdicts[0].extracted})
    ks = ks or [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n_samples]
    ks = sorted(set(ks) | {1})
    # one bootstrap (same seed) for every k, so pass@1's interval is the k=1 row of the table
    table = pass_at_k_table([(r["n"], r["correct"]) for r in per_problem], ks, seed=seed)
    p1 = [pass_at_k(r["n"], r["correct"], 1) for r in per_problem]
    low, high = table.loc[table["k"] == 1, ["ci_low", "ci_high"]].iloc[0]
    return EvalResult(task=task.name, split=split, n_problems=len(problems), n_samples=n_samples,
                      temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                      pass_at_1=float(sum(p1) / len(p1)), ci_low=float(low), ci_high=float(high),
                      pass_at_k=table.to_dict("records"), per_problem=per_problem,
                      mean_length=float(sum(lengths) / len(lengths)),
                      truncated=float(sum(truncated) / len(truncated)), samples=samples,
                      reasoning={**reasoning_metrics(texts, passed, answers),
                                 # E_{y_t ~ pi}[-log pi(y_t)] estimated on the policy's own samples: its token entropy
                                 # (at temperature T, of the tempered distribution it sampled from), nats per token
                                 "token_entropy": nll_sum / nll_tokens if nll_tokens else float("nan")})
