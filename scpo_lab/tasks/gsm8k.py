"""GSM8K grade-school math word problems (Cobbe et al. 2021), from the vendored copy or the HF hub."""

import json
import random
from pathlib import Path

from scpo_lab.tasks.answers import canonical_number
from scpo_lab.tasks.base import Problem, Task, Verdict, check_count, check_split, verify_final_answer

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "gsm8k"  # train.jsonl, test.jsonl, PROVENANCE.md
SOURCES = ("vendored", "hub")
HUB_DATASET = ("openai/gsm8k", "main")
INSTRUCTION = 'Solve the problem step by step. On the last line, write "####" followed by the final answer as a number.'


def parse_gold_answer(solution: str) -> str:
    """Ground truth of a GSM8K solution: the number after "####", commas removed, canonical ("1,234" -> "1234")."""
    if "####" not in solution:
        raise ValueError(f"gsm8k answer: no '####' in solution ending {solution[-60:]!r}")
    raw = solution.rsplit("####", 1)[1].strip().replace(",", "")
    answer = canonical_number(raw)
    if answer is None:
        raise ValueError(f"gsm8k answer: not a number after '####': {raw!r}")
    return answer


class GSM8KTask(Task):
    """7473 train / 1319 test problems. Problem ids "gsm8k-<split>-<row index>"; meta["solution"] keeps the
    reference solution verbatim (with its <<calculator>> annotations and "#### answer" line) for teachers."""

    name = "gsm8k"

    def __init__(self, source: str = "vendored", system_prompt: str | None = None):
        if source not in SOURCES:
            raise ValueError(f"task.source: unknown {source!r}; known: {', '.join(SOURCES)}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError(f"task.system_prompt: must be a string or None (got {type(system_prompt).__name__})")
        self.source, self.system_prompt = source, system_prompt
        self._rows: dict[str, list[dict]] = {}  # split -> [{"question", "answer"}], loaded on first use

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """All problems in file order (n=None), or a seeded sample of n distinct ones."""
        check_split(split)
        rows = self._load(split)
        if n is None:
            indices = list(range(len(rows)))
        else:
            check_count(n)
            if n > len(rows):
                raise ValueError(f"n: {n} exceeds the {len(rows)} gsm8k {split} problems")
            indices = random.Random(f"gsm8k:{split}:{seed}").sample(range(len(rows)), n)
        return [self._make_problem(split, i, rows[i]) for i in indices]

    def verify(self, problem: Problem, completion: str) -> Verdict:
        return verify_final_answer(problem, completion)

    def _make_problem(self, split: str, index: int, row: dict) -> Problem:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": f"{row['question']}\n\n{INSTRUCTION}"})
        return Problem(
            id=f"gsm8k-{split}-{index}",
            prompt=messages,
            answer=parse_gold_answer(row["answer"]),
            meta={"question": row["question"], "solution": row["answer"]},
        )

    def _load(self, split: str) -> list[dict]:
        if split not in self._rows:
            if self.source == "vendored":
                with open(DATA_DIR / f"{split}.jsonl", encoding="utf-8") as f:
                    rows = [json.loads(line) for line in f if line.strip()]
            else:
                import datasets  # heavy import, and needs the network: only on request

                hub = datasets.load_dataset(*HUB_DATASET, split=split)
                rows = [{"question": r["question"], "answer": r["answer"]} for r in hub]
            self._rows[split] = rows
        return self._rows[split]
