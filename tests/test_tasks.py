"""Tasks: registry, arithmetic (procedural) and gsm8k (vendored data)."""

import pytest

from scpo_lab.tasks import TASK_NAMES, ArithmeticTask, GSM8KTask, Problem, get_task
from scpo_lab.tasks.arithmetic import PROMPT_TEMPLATE, canonical_form, evaluate, format_expression, split_of


# ------------------------------------------------------------------------------------------------ registry

def test_registry_names_and_types():
    assert TASK_NAMES == ("arithmetic", "gsm8k", "mbppplus", "livecodebench")
    assert isinstance(get_task("arithmetic", digits=2), ArithmeticTask)
    assert isinstance(get_task("gsm8k"), GSM8KTask)


def test_registry_unknown_name():
    with pytest.raises(ValueError) as err:
        get_task("x")
    assert str(err.value) == "task.name: unknown 'x'; known: arithmetic, gsm8k, mbppplus, livecodebench"


@pytest.mark.parametrize("name, option", [("arithmetic", "digit"), ("gsm8k", "split")])
def test_registry_unknown_option(name, option):
    with pytest.raises(ValueError) as err:
        get_task(name, **{option: 1})
    message = str(err.value)
    assert "\n" not in message and option in message
    allowed = "digits, operators, n_operands, seed, max_operand" if name == "arithmetic" else "source, system_prompt"
    assert message.endswith(f"allowed: {allowed}")


@pytest.mark.parametrize(
    "options, field",
    [
        ({"digits": 0}, "task.digits"),
        ({"digits": "2"}, "task.digits"),
        ({"n_operands": 1}, "task.n_operands"),
        ({"operators": ""}, "task.operators"),
        ({"operators": "+/"}, "task.operators"),
        ({"seed": 1.5}, "task.seed"),
    ],
)
def test_arithmetic_bad_options(options, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ArithmeticTask(**options)


def test_gsm8k_bad_source():
    with pytest.raises(ValueError, match="^task.source: unknown 'web'; known: vendored, hub$"):
        GSM8KTask(source="web")


# ------------------------------------------------------------------------------------------------ arithmetic

@pytest.mark.parametrize(
    "tokens, value",
    [
        ([2, "+", 3, "*", 4], 14),
        ([2, "*", 3, "+", 4], 10),
        ([7, "+", 5, "-", 3], 9),
        ([9, "-", 2, "*", 3, "-", 1], 2),
        ([2, "*", 3, "*", 4, "-", 5, "*", 6], -6),
        ([1, "-", 2, "-", 3], -4),  # left to right, not 1 - (2 - 3)
        ([0, "*", 9], 0),
    ],
)
def test_evaluate_precedence(tokens, value):
    assert evaluate(tokens) == value


def test_evaluate_rejects_bad_tokens():
    with pytest.raises(ValueError):
        evaluate([1, "/", 2])
    with pytest.raises(ValueError):
        evaluate([1, "+"])


def test_arithmetic_deterministic_and_seeded():
    task = ArithmeticTask(digits=2, operators="+-*", n_operands=3)
    first = task.problems("train", n=20, seed=1)
    assert first == ArithmeticTask(digits=2, operators="+-*", n_operands=3).problems("train", n=20, seed=1)
    assert first != task.problems("train", n=20, seed=2)
    assert first != ArithmeticTask(digits=2, operators="+-*", n_operands=3, seed=5).problems("train", n=20, seed=1)
    assert len({p.id for p in first}) == 20


def test_arithmetic_problem_shape():
    task = ArithmeticTask(digits=2, operators="*", n_operands=3)
    for p in task.problems("test", n=10):
        tokens = p.meta["tokens"]
        operands = tokens[0::2]
        assert all(10 <= x <= 99 for x in operands) and set(tokens[1::2]) == {"*"}
        assert p.answer == str(operands[0] * operands[1] * operands[2])
        assert p.prompt == [{"role": "user", "content": PROMPT_TEMPLATE.format(expression=p.meta["expression"])}]
        assert p.prompt[0]["content"].startswith(f"What is {p.meta['expression']}?")
        assert split_of(p.meta["expression"]) == "test"


def test_arithmetic_single_digit_allows_zero_to_nine():
    operands = {x for p in ArithmeticTask(digits=1).problems("train", n=150) for x in p.meta["tokens"][0::2]}
    assert operands == set(range(10))


@pytest.mark.parametrize("options", [dict(digits=1, n_operands=2), dict(digits=3, operators="+-*", n_operands=4)])
def test_arithmetic_train_test_disjoint(options):
    task = ArithmeticTask(**options)
    train = {p.meta["expression"] for p in task.problems("train", n=150)}
    test = {p.meta["expression"] for p in task.problems("test", n=30)}
    assert train and test and not train & test


@pytest.mark.parametrize("options", [dict(max_operand=20), dict(digits=1, operators="+-*", n_operands=3)])
def test_arithmetic_commuted_twins_share_a_split(options):
    """Hashing the text split "a + b" from "b + a": 34 of the cpu profile's 100 held-out problems had their twin in
    training. Every reordering of the + terms and of each product's factors lands in its expression's split."""
    task = ArithmeticTask(**options)
    split = {format_expression(t): s for s in ("train", "test") for t in task._pool(s)}
    for expression, where in split.items():
        for other in _commuted(expression.split()):
            assert split[other] == where, (expression, other)
    assert 0.12 < sum(s == "test" for s in split.values()) / len(split) < 0.28  # still ~1 in 5


def _commuted(tokens: list[str]) -> list[str]:
    """Swap the operands around each "+" whose both neighbours are single-factor terms, and the factors of each
    "*": the twins a student would write for the same sum or product."""
    twins = []
    for i in range(1, len(tokens), 2):
        single = (i == 1 or tokens[i - 2] != "*") and (i + 2 >= len(tokens) or tokens[i + 2] != "*")
        if tokens[i] == "*" or (tokens[i] == "+" and single and (i == 1 or tokens[i - 2] == "+")):
            swapped = list(tokens)
            swapped[i - 1], swapped[i + 1] = tokens[i + 1], tokens[i - 1]
            twins.append(" ".join(swapped))
    return twins


def test_arithmetic_canonical_form_keeps_subtraction_apart():
    assert canonical_form("17 + 3") == canonical_form("3 + 17") == "+3 +17"
    assert canonical_form("4 - 2 * 3") == canonical_form("4 - 3 * 2") != canonical_form("2 * 3 - 4")
    assert canonical_form("3 - 17") != canonical_form("17 - 3")  # different values: different problems
    assert canonical_form("1 + 2 * 3") == canonical_form("3 * 2 + 1")
    for bad in ("3 +", "3 4 5", "3 +- 4", "x + 1", "--3 + 1", "\u00b2 + 1"):
        with pytest.raises(ValueError, match="^expression: "):
            canonical_form(bad)


@pytest.mark.parametrize("options", [dict(max_operand=20), dict(digits=3, operators="+-*", n_operands=4)])
def test_arithmetic_held_out_problems_are_distinct_up_to_commutation(options):
    """With commuted twins on one side of the split, the cpu profile's 100 held-out problems held 16 pairs
    "a + b" / "b + a" (84 distinct sums), which the bootstrap over problems counted as independent problems.
    Listed (small) and drawn (large) spaces alike."""
    test = ArithmeticTask(**options).problems("test", n=100, seed=1234)
    assert len({canonical_form(p.meta["expression"]) for p in test}) == 100


def test_arithmetic_small_space():
    task = ArithmeticTask(digits=1, operators="+", n_operands=2)  # 100 expressions, ~20 in test
    n_test = sum(split_of(f"{a} + {b}") == "test" for a in range(10) for b in range(10))
    n_distinct = len({canonical_form(f"{a} + {b}") for a in range(10) for b in range(10)
                      if split_of(f"{a} + {b}") == "test"})  # up to commutation: ~half as many
    test = task.problems("test", n=n_distinct)
    assert len({canonical_form(p.meta["expression"]) for p in test}) == n_distinct < n_test
    with pytest.raises(ValueError, match="^n: .*up to commutation"):
        task.problems("test", n=n_distinct + 1)
    train = task.problems("train", n=200)  # more than the train split holds: repeats, ids stay unique
    assert len({p.meta["expression"] for p in train}) == 100 - n_test
    assert len({p.id for p in train}) == 200


def test_arithmetic_requires_n_and_valid_split():
    task = ArithmeticTask()
    with pytest.raises(ValueError, match="^n: "):
        task.problems("train")
    with pytest.raises(ValueError, match="^split: unknown 'val'; known: train, test$"):
        task.problems("val", n=3)
    assert task.problems("train", n=0) == []


def _fixed_problem(answer="12"):
    return Problem(id="fixed", prompt=[{"role": "user", "content": "What is 7 + 5?"}], answer=answer)


@pytest.mark.parametrize(
    "completion, reward, extracted, feedback",
    [
        ("7 + 5 = 12", 1.0, "12", "The expected answer is 12. Your final answer 12 is correct."),
        ("#### 12", 1.0, "12", "The expected answer is 12. Your final answer 12 is correct."),
        (r"\boxed{12.0}", 1.0, "12", "The expected answer is 12. Your final answer 12 is correct."),
        ("7 + 5 = 12. So the answer is 13", 0.0, "13", "The expected answer is 12. Your final answer 13 is wrong."),
        ("It is 10, no wait: 12", 1.0, "12", "The expected answer is 12. Your final answer 12 is correct."),
        ("The answer is 12. Then 12 + 1 = 13", 1.0, "12", "The expected answer is 12. Your final answer 12 is correct."),
        ("I think it's 40", 0.0, "40", "The expected answer is 12. Your final answer 40 is wrong."),
        ("I am not sure.", 0.0, None, "The expected answer is 12. No final answer was found in your response."),
        ("", 0.0, None, "The expected answer is 12. No final answer was found in your response."),
    ],
)
def test_verify(completion, reward, extracted, feedback):
    verdict = ArithmeticTask().verify(_fixed_problem(), completion)
    assert (verdict.reward, verdict.passed, verdict.extracted, verdict.feedback) == (
        reward, reward == 1.0, extracted, feedback)


def test_verify_negative_and_generated_problem():
    assert ArithmeticTask().verify(_fixed_problem("-4"), "3 - 7 = -4").passed
    assert not ArithmeticTask().verify(_fixed_problem("-4"), "3 - 7 = 4").passed
    task = ArithmeticTask(digits=2, operators="+-*", n_operands=3)
    for p in task.problems("train", n=5):
        assert task.verify(p, f"{p.meta['expression']} = {p.answer}").passed
        assert not task.verify(p, f"{p.meta['expression']} = {int(p.answer) + 1}").passed


# ------------------------------------------------------------------------------------------------ gsm8k

@pytest.fixture(scope="module")
def gsm8k():
    return GSM8KTask()


def test_gsm8k_sizes_and_known_item(gsm8k):
    train, test = gsm8k.problems("train"), gsm8k.problems("test")
    assert (len(train), len(test)) == (7473, 1319)
    first = train[0]
    assert first.id == "gsm8k-train-0" and first.answer == "72"
    assert first.meta["question"].startswith("Natalia sold clips to 48 of her friends")
    assert first.meta["solution"].endswith("#### 72")
    assert first.prompt[0]["role"] == "user" and "####" in first.prompt[0]["content"]
    assert len({p.id for p in train}) == 7473


def test_gsm8k_answers_canonical(gsm8k):
    answers = [p.answer for split in ("train", "test") for p in gsm8k.problems(split)]
    assert all("," not in a and not a.endswith(".0") for a in answers)
    assert "-12" in answers  # negative gold answers survive
    train = gsm8k.problems("train")
    assert train[345].meta["solution"].endswith("#### 1,080") and train[345].answer == "1080"  # thousands comma
    assert train[367].meta["solution"].endswith("#### 850,000") and train[367].answer == "850000"


def test_gsm8k_sampling(gsm8k):
    sample = gsm8k.problems("test", n=10, seed=3)
    assert sample == gsm8k.problems("test", n=10, seed=3)
    assert sample != gsm8k.problems("test", n=10, seed=4)
    assert len({p.id for p in sample}) == 10 and all(p.id.startswith("gsm8k-test-") for p in sample)
    with pytest.raises(ValueError, match="^n: "):
        gsm8k.problems("test", n=2000)


def test_gsm8k_train_test_disjoint(gsm8k):
    train = {p.meta["question"] for p in gsm8k.problems("train")}
    test = {p.meta["question"] for p in gsm8k.problems("test")}
    assert not train & test


def test_gsm8k_system_prompt_and_verify():
    task = get_task("gsm8k", system_prompt="You are a careful solver.")
    problem = task.problems("train", n=1, seed=0)[0]
    assert problem.prompt[0] == {"role": "system", "content": "You are a careful solver."}
    assert problem.prompt[1]["role"] == "user"
    assert task.verify(problem, problem.meta["solution"]).passed  # the reference solution scores 1
    wrong = task.verify(problem, "#### 123456789")
    assert not wrong.passed and wrong.feedback.startswith(f"The expected answer is {problem.answer}.")


def test_max_operand_sets_the_operand_range_and_grows_the_test_split():
    task = get_task("arithmetic", max_operand=20)
    problems = task.problems("test", n=128, seed=0)  # the cpu profile's evaluation (sizes.EVAL_SETTINGS)
    operands = [t for p in problems for t in p.meta["tokens"][::2]]
    assert min(operands) >= 0 and max(operands) <= 20 and max(operands) > 9
    assert len({p.id for p in problems}) == 128
    with pytest.raises(ValueError, match="^task.max_operand:"):
        get_task("arithmetic", max_operand=0)
