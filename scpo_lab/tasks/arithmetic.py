"""Procedural integer arithmetic ("7 + 5 - 3"), seeded, with a train/test split fixed by the expression's canonical
form: "3 + 17" and "17 + 3" (or "2 * 3 - 4" and "3 * 2 - 4") are one problem up to commutation and share a split."""

import hashlib
import itertools
import random
import re
from typing import Sequence

from scpo_lab.tasks.base import Problem, Task, Verdict, check_count, check_split, verify_final_answer

ALLOWED_OPERATORS = "+-*"
PROMPT_TEMPLATE = "What is {expression}? Give the final answer as a number at the end."
TEST_ONE_IN = 5               # an expression is a test problem iff hash(canonical form) % 5 == 0 (~20% of the space)
ENUMERATE_MAX = 50_000        # spaces up to this size are listed in full; larger ones are sampled by rejection
DRAWS_PER_PROBLEM = 100       # rejection budget before declaring the split too small for n distinct problems


def evaluate(tokens: Sequence) -> int:
    """Value of [a, op, b, op, c, ...] with normal precedence: * before + and -, then left to right."""
    if len(tokens) % 2 == 0:
        raise ValueError(f"tokens: expected operand (op operand)*, got {len(tokens)} tokens")
    terms, signs = [tokens[0]], [1]
    for op, operand in zip(tokens[1::2], tokens[2::2]):
        if op == "*":
            terms[-1] = terms[-1] * operand  # fold products into the current term first
        elif op in ("+", "-"):
            terms.append(operand)
            signs.append(1 if op == "+" else -1)
        else:
            raise ValueError(f"tokens: unknown operator {op!r}; known: + - *")
    return sum(sign * term for sign, term in zip(signs, terms))  # sum_i s_i * term_i


def format_expression(tokens: Sequence) -> str:
    return " ".join(str(t) for t in tokens)


def canonical_form(expression: str) -> str:
    """The expression up to commutation of + and *: its signed product terms, each term's factors sorted, the terms
    sorted. "17 + 3" -> "+3 +17"; "4 - 2 * 3" and "4 - 3 * 2" -> "+4 -2*3". Subtraction does not commute, so
    "3 - 17" and "17 - 3" stay apart (their values differ)."""
    tokens = expression.split()
    if len(tokens) % 2 == 0 or any(op not in ("+", "-", "*") for op in tokens[1::2]) or \
            not all(re.fullmatch(r"-?[0-9]+", t) for t in tokens[0::2]):
        raise ValueError(f"expression: expected operand (op operand)* with ops + - *, got {expression!r}")
    tokens = [t if i % 2 else int(t) for i, t in enumerate(tokens)]
    terms, factors = [], [tokens[0]]
    sign = "+"
    for op, operand in zip(tokens[1::2], tokens[2::2]):
        if op == "*":
            factors.append(operand)
        else:
            terms.append(sign + "*".join(str(f) for f in sorted(factors)))
            sign, factors = op, [operand]
    terms.append(sign + "*".join(str(f) for f in sorted(factors)))
    return " ".join(sorted(terms, key=lambda term: (term[0], [int(f) for f in term[1:].split("*")])))


def split_of(expression: str) -> str:
    """"train" or "test", from a stable hash of the canonical form (hashlib, not hash(): same across runs and
    processes). Hashing the text split "a + b" and "b + a" apart: 34 of the cpu profile's 100 held-out problems had
    their commuted twin among the training problems."""
    digest = hashlib.sha256(canonical_form(expression).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_ONE_IN == 0 else "train"


class ArithmeticTask(Task):
    """Expressions of `n_operands` integers with exactly `digits` digits (0..9 when digits=1) — or, when
    `max_operand` is set, integers 0..max_operand — operators drawn from `operators`. Train and test are
    disjoint by construction, and so are their commuted twins (split_of). Test problems are always
    distinct up to commutation, so no two held-out problems are one sum written twice (ValueError if the split has
    fewer than n). Train problems are distinct while the split allows;
    when n exceeds a small space's train split, problems repeat (each repeat gets an id suffix "-r<k>")."""

    name = "arithmetic"
    # 1 (unrecorded): split by the text, commuted twins crossed it; 2: split by the canonical form; 3: held-out
    # samples distinct up to commutation (the same n and seed drew another test set under 2)
    data_revision = 3

    def __init__(self, digits: int = 1, operators: str = "+-", n_operands: int = 2, seed: int = 0,
                 max_operand: int | None = None):
        if isinstance(digits, bool) or not isinstance(digits, int) or digits < 1:
            raise ValueError(f"task.digits: must be an integer >= 1 (got {digits!r})")
        if isinstance(n_operands, bool) or not isinstance(n_operands, int) or n_operands < 2:
            raise ValueError(f"task.n_operands: must be an integer >= 2 (got {n_operands!r})")
        if not isinstance(operators, str) or not operators or set(operators) - set(ALLOWED_OPERATORS):
            raise ValueError(f"task.operators: must be a non-empty subset of '{ALLOWED_OPERATORS}' (got {operators!r})")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"task.seed: must be an integer (got {seed!r})")
        self.digits, self.n_operands, self.seed = digits, n_operands, seed
        self.operators = "".join(op for op in ALLOWED_OPERATORS if op in operators)  # "-+-" -> "+-": one order
        self.low, self.high = (0, 9) if digits == 1 else (10 ** (digits - 1), 10**digits - 1)
        if max_operand is not None:  # operands 0..max_operand instead of exactly `digits` digits
            if isinstance(max_operand, bool) or not isinstance(max_operand, int) or max_operand < 1:
                raise ValueError(f"task.max_operand: must be an integer >= 1 or None (got {max_operand!r})")
            self.low, self.high = 0, max_operand
        self.max_operand = max_operand
        n_values = self.high - self.low + 1
        self.space_size = n_values**n_operands * len(self.operators) ** (n_operands - 1)
        self._pools: dict[str, list[tuple]] = {}  # split -> every expression of that split (small spaces only)

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """n problems of `split`, deterministic in (task options, split, n, seed); n is required."""
        check_split(split)
        if n is None:
            raise ValueError("n: required for the procedural task arithmetic (got None)")
        check_count(n)
        rng = random.Random(f"arithmetic:{self.seed}:{split}:{seed}")  # str seeds are hashed stably (sha512)
        if self.space_size <= ENUMERATE_MAX:
            token_lists = self._sample_listed(split, n, rng)
        else:
            token_lists = self._sample_drawn(split, n, rng)
        seen: dict[str, int] = {}
        problems = []
        for tokens in token_lists:
            expression = format_expression(tokens)
            repeat = seen.get(expression, 0)
            seen[expression] = repeat + 1
            problems.append(self._make_problem(split, tokens, repeat))
        return problems

    def verify(self, problem: Problem, completion: str) -> Verdict:
        return verify_final_answer(problem, completion)

    def _make_problem(self, split: str, tokens: tuple, repeat: int) -> Problem:
        expression = format_expression(tokens)
        problem_id = f"arithmetic-{split}-{hashlib.sha256(expression.encode()).hexdigest()[:12]}"
        if repeat:
            problem_id += f"-r{repeat}"
        return Problem(
            id=problem_id,
            prompt=[{"role": "user", "content": PROMPT_TEMPLATE.format(expression=expression)}],
            answer=str(evaluate(tokens)),
            meta={"expression": expression, "tokens": list(tokens)},
        )

    def _random_tokens(self, rng: random.Random) -> tuple:
        tokens = [rng.randint(self.low, self.high)]
        for _ in range(self.n_operands - 1):
            tokens += [rng.choice(self.operators), rng.randint(self.low, self.high)]
        return tuple(tokens)

    def _pool(self, split: str) -> list[tuple]:
        if split not in self._pools:
            operand_values = range(self.low, self.high + 1)
            pools = {"train": [], "test": []}
            for operands in itertools.product(operand_values, repeat=self.n_operands):
                for ops in itertools.product(self.operators, repeat=self.n_operands - 1):
                    tokens = (operands[0],) + tuple(itertools.chain.from_iterable(zip(ops, operands[1:])))
                    pools[split_of(format_expression(tokens))].append(tokens)
            self._pools.update(pools)
        return self._pools[split]

    def _sample_listed(self, split: str, n: int, rng: random.Random) -> list[tuple]:
        pool = self._pool(split)
        if split == "test":  # distinct up to commutation: "3 + 17" and "17 + 3" are one held-out problem, not two
            order = list(pool)
            rng.shuffle(order)
            firsts, forms = [], set()
            for tokens in order:  # the first expression of each canonical form, in shuffled order
                form = canonical_form(format_expression(tokens))
                if form not in forms:
                    forms.add(form)
                    firsts.append(tokens)
            if n > len(firsts):
                raise ValueError(f"n: {n} exceeds the {len(firsts)} distinct test problems (up to commutation) of "
                                 "this arithmetic space")
            return firsts[:n]
        if n > len(pool) and not pool:
            raise ValueError(f"n: {n} exceeds the {len(pool)} distinct {split} problems of this arithmetic space")
        sample: list[tuple] = []
        while len(sample) < n:  # whole shuffled passes: distinct until the pool runs out, then even repeats
            order = list(pool)
            rng.shuffle(order)
            sample += order[: n - len(sample)]
        return sample

    def _sample_drawn(self, split: str, n: int, rng: random.Random) -> list[tuple]:
        sample, seen = [], set()
        for _ in range(DRAWS_PER_PROBLEM * n + 10_000):
            if len(sample) == n:
                break
            tokens = self._random_tokens(rng)
            key = canonical_form(format_expression(tokens)) if split == "test" else tokens  # test: up to commutation
            if key not in seen and split_of(format_expression(tokens)) == split:
                seen.add(key)
                sample.append(tokens)
        if len(sample) < n:
            distinct = " (up to commutation)" if split == "test" else ""
            raise ValueError(f"n: found only {len(sample)} distinct{distinct} {split} problems of {n} asked; use a "
                             "larger space")
        return sample
