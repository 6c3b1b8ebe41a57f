"""Adversarial cases for final-answer extraction and comparison (scpo_lab/tasks/answers.py)."""

import pytest

from scpo_lab.tasks.answers import answers_match, canonical_number, extract_final_answer

EXTRACTION_CASES = [
    # markers
    ("#### 42", "42"),
    ("Some work.\n#### 72", "72"),
    (r"So we get \boxed{42}.", "42"),
    ("The answer is 42.", "42"),
    ("Answer: 42", "42"),
    ("**Final Answer:** 17", "17"),
    ("The final answer is: **$1,234.50**", "1234.5"),
    ("The answer is therefore 8 apples.", "8"),
    # the marked answer beats later numbers; the last marker wins
    ("7 + 5 = 12. So the answer is 13", "13"),
    ("The answer is 13. Check: 7 + 5 = 12.", "13"),
    ("#### 12\nActually the answer is 15.", "15"),
    (r"The answer is 3. Wait, recompute: \boxed{4}", "4"),
    (r"\boxed{5} and later \boxed{6}", "6"),
    # a marker with no answer falls back to earlier markers, then to the last number
    ("The answer is below. First, 3 + 4 = 7", "7"),
    ("#### 9\nThe answer is unclear.", "9"),
    ("#### \nwe had 3 then 5", "5"),
    ('I will write "####" followed by the answer. 3 + 4 = 7', "7"),  # echoed instruction is no answer
    ("#### 2\\sqrt{2}", "2\\sqrt{2}"),
    (r"\boxed{42", "42"),  # truncated box: no answer inside, last number
    # delimited spans: the value after the last "="
    (r"\boxed{x = 5}", "5"),
    ("#### 5 + 7 = 12", "12"),
    (r"\boxed{42 \text{ apples}}", "42"),
    (r"\boxed{\$18}", "18"),
    # fractions and latex
    (r"\boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed{\dfrac{3}{4}}", "0.75"),
    ("The answer is 1/3", "1/3"),
    (r"\boxed{2\sqrt{2}}", r"2\sqrt{2}"),  # not a plain number: raw, for math_verify
    (r"\boxed{x+1}", "x+1"),
    (r"It is 1{,}234 in total", "1234"),
    # no marker: last number
    ("It costs $1,234.50", "1234.5"),
    ("-3", "-3"),
    ("The result is 0.5", "0.5"),
    ("That is 50% of them", "50"),
    ("She has 42 apples", "42"),
    ("He earned 42 dollars.", "42"),
    ("so 5 + 7 =12.", "12"),
    ("1, 2, 3", "3"),
    ("10,20,30", "30"),
    ("The score was 3-4", "4"),
    ("x = -3", "-3"),
    ("a loss of -$5", "-5"),
    ("x \u2212 3 = \u22124", "-4"),  # unicode minus
    ("12.0", "12"),
    ("3.50 dollars", "3.5"),
    ("add .5 cups", "0.5"),
    ("007", "7"),
    ("-0", "0"),
    ("version 1.2.3", "3"),
    ("57 empty seats after the 2nd stop", "57"),  # ordinals are skipped
    ("on the 13th day", None),
    # scientific-ish: never crash
    ("1e5", "100000"),
    ("1.5e-3", "0.0015"),
    ("1e99999", "1E+99999"),
    ("3 then 1/0", "3"),  # 1/0 is no number: the last valid one wins
    ("1/0", None),
    ("2e", "2"),
    ("9" * 5000 + "/7", None),           # too long for int(): dropped, no crash
    ("1e" + "9" * 5000, None),            # exponent beyond Decimal's range
    ("x = " + "9" * 2000, "1E+2000"),     # huge: normalized scientific text (28 significant digits)
    # "the answer is" opening an equation: the value after its last "=" in that clause (it read the first operand)
    ("The answer is 3 + 4 = 7", "7"),
    ("Answer: 3 + 4 = 7", "7"),
    ("The answer is 7 - 3 = 4.", "4"),
    ("The answer is 5 - 8 = -3", "-3"),
    ("The answer is 12, since 5 + 7 = 13", "12"),  # the equation is in another clause
    ("The answer is 4.5. Check: 2 + 2.5 = 4.5", "4.5"),
    ("The answer is 7 = 3 + 4", "7"),              # after "=" an expression, not a lone number: the first
    ("The answer is x = 5", "5"),
    # a minus a space from its digits after "=", ":", "answer is" or "####" is a sign; elsewhere a subtraction
    ("The answer is - 5", "-5"),
    ("3 - 8 = - 5", "-5"),
    ("Answer: - 5", "-5"),
    ("#### - 7", "-7"),
    ("\\boxed{- 7}", "-7"),
    ("Answer: - 0", "0"),
    ("3 - 5", "5"),
    # nothing
    ("no number here", None),
    ("", None),
    (None, None),
    ("The answer is", None),
]


@pytest.mark.parametrize("text, expected", EXTRACTION_CASES)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


MATCH_CASES = [
    ("42", "42", True),
    ("42", "42.0", True),
    ("0.5", "1/2", True),
    ("1/2", "0.5", True),
    (r"\frac{1}{2}", "0.5", True),
    ("$1,234.50", "1234.5", True),
    ("50%", "50", True),
    ("-3", "-3", True),
    ("-3", "3", False),
    ("40", "42", False),
    ("1/3", "0.333333", True),       # |diff| = 3.3e-7 <= 1e-6 * 1/3
    ("1/3", "0.3333", False),
    ("1000000", "1000000.5", True),  # relative tolerance
    ("1000001", "1000000", False),   # two integers: exact (the tolerance let answers off by 1 pass above 1e6)
    ("100000000", "100000001", False),
    ("2880000", "2,880,000", True),
    ("1", "1.00001", False),
    ("0", "0", True),
    ("0", "0.0000001", False),
    (r"2\sqrt{2}", r"\sqrt{8}", True),  # math_verify fallback
    ("x+1", "1+x", True),
    ("x+1", "42", False),
    ("I don't know", "42", False),
    (None, "42", False),
    ("1E+99999", "1E+99999", True),
]


@pytest.mark.parametrize("pred, truth, expected", MATCH_CASES)
def test_answers_match(pred, truth, expected):
    assert answers_match(pred, truth) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,234", "1234"), ("72", "72"), ("-12", "-12"), ("1234.50", "1234.5"), ("5.0", "5"),
        ("$18", "18"), ("50%", "50"), ("abc", None), ("1 2", None), ("", None),
    ],
)
def test_canonical_number(text, expected):
    assert canonical_number(text) == expected


def test_numeric_compare_does_not_call_math_verify(monkeypatch):
    # plain numbers must never reach the slow path
    import scpo_lab.tasks.answers as answers

    def boom(*args):
        raise AssertionError("math_verify called for numeric answers")

    monkeypatch.setattr(answers, "_math_verify_equal", boom)
    assert answers_match("40", "42") is False
    assert answers_match("0.5", "1/2") is True
