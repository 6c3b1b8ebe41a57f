"""Final-answer extraction and comparison shared by the numeric tasks.

extract_final_answer(text) finds the answer a completion commits to:
  1. the LAST answer marker that yields an answer wins: "#### x", "\\boxed{x}", "the answer is x", "Answer: x";
  2. otherwise the LAST number in the text;
  3. otherwise None.
Numbers come back in canonical form ("42", "-3", "1234.5", "0.5"); a marked answer that is not a plain number
("\\sqrt{2}", "x+1") comes back as its raw text, and answers_match hands it to math_verify.
"""

import logging
import re
from fractions import Fraction
from decimal import Decimal, InvalidOperation

# ---------------------------------------------------------------------------------------------------------------
# number tokens

# A minus is a sign only when not glued to a preceding word, number or bracket: "3-4" is a hyphen, "= -3" a sign.
_SIGN = r"(?P<sign>(?<![\w)\]}])[-\u2212](?:\\?\$)?)?"
_NUMBER = re.compile(
    _SIGN
    + r"(?:"
    + r"\\[dt]?frac\{(?P<lnum>\d+)\}\{(?P<lden>\d+)\}"          # \frac{1}{2}
    + r"|(?P<num>\d+)/(?P<den>\d+)"                               # 1/2
    + r"|(?:(?:(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?"  # 1,234.50 (commas: thousands in 3s)
    + r"|(?<![\w.])(?P<dot>\.\d+))"                                  # .5
    + r"(?P<exp>[eE][-+]?\d+)?"                                      # 1.5e-3
    + r"(?!\d|(?:st|nd|rd|th)\b))"                                  # "13th", "2nd" are ordinals, not answers
    + r")"
)
# Beyond 1000 digits or a 10^1000 exponent, int()/str(int) hit Python's 4300-digit limit or get slow:
# such tokens keep their normalized text (or are dropped) instead of becoming a Fraction.
_MAX_EXPONENT = 1000


def _fraction_from_match(m: re.Match) -> Fraction | str | None:
    """Exact value of a number token; a string (normalized scientific) when too large to expand; None if
    1/0 or absurdly long."""
    negative = bool(m.group("sign"))
    if m.group("lnum") is not None or m.group("num") is not None:
        num, den = (m.group("lnum"), m.group("lden")) if m.group("lnum") is not None else m.group("num", "den")
        if max(len(num), len(den)) > _MAX_EXPONENT or int(den) == 0:  # int() refuses > 4300 digits
            return None
        value = Fraction(int(num), int(den))
    else:
        mantissa = (m.group("int") or "0").replace(",", "") + (m.group("frac") or m.group("dot") or "")
        try:
            dec = Decimal(mantissa + (m.group("exp") or ""))
        except (InvalidOperation, ValueError, OverflowError):  # e.g. an exponent too large for the C type
            return None
        if abs(dec.adjusted()) > _MAX_EXPONENT:
            text = str(dec.normalize())
            return "-" + text if negative else text
        value = Fraction(dec)
    return -value if negative else value


def _format_fraction(value: Fraction) -> str:
    """Integers without ".0", terminating decimals without trailing zeros, other rationals as "p/q"."""
    if value.denominator == 1:
        return str(value.numerator)
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator  # exact: value * 10^places is an integer
    digits = str(scaled).rjust(places + 1, "0")
    text = (digits[:-places] + "." + digits[-places:]).rstrip("0").rstrip(".")
    return "-" + text if value < 0 else text


def _canonical_from_match(m: re.Match) -> str | None:
    value = _fraction_from_match(m)
    if value is None or isinstance(value, str):
        return value
    return _format_fraction(value)


def _normalize_latex_numbers(text: str) -> str:
    # "1{,}234" and "1\,234" are LaTeX thousands separators; "\$" and "\%" are escaped symbols.
    text = text.replace("{,}", ",")
    return re.sub(r"(?<=\d)\\,(?=\d{3})", ",", text)


# A whole string that is one number, possibly with currency/percent decoration: "$1,234.50", "50%", "-3", "\frac{1}{2}".
_WHOLE_NUMBER = re.compile(r"\s*(?:\\?\$)?\s*(?P<token>" + _NUMBER.pattern + r")\s*(?:\\?%)?\s*\.?\s*")


def canonical_number(text: str) -> str | None:
    """Canonical form of a string that is a single number ("1,234.50" -> "1234.5", "-0" -> "0"); else None."""
    m = _WHOLE_NUMBER.fullmatch(_normalize_latex_numbers(text))
    if m is None:
        return None
    return _canonical_from_match(_NUMBER.fullmatch(m.group("token")))


# ---------------------------------------------------------------------------------------------------------------
# answer markers

_HASHES = re.compile(r"####")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PROSE = re.compile(r"\banswer(?:\*\*|__)?\s*(?:is\b|:|=)\s*:?", re.IGNORECASE)
# What may sit between "the answer is" and its number: a few words/markup, but no sentence end and no digit,
# so "The answer is below. First, 3 + 4" does not read 3 as the answer.
_PROSE_GAP_MAX_CHARS, _PROSE_GAP_MAX_WORDS = 40, 3
# Left over beside a single number in a \boxed{}/#### span, these mean the answer is an expression, not that number.
_MATH_LEFTOVER = re.compile(
    r"[-+*/^_\u00b1\u2212]|\\(?:sqrt|frac|dfrac|tfrac|pi|cdot|times|div|log|ln|sin|cos|tan|infty|pm)(?![a-zA-Z])"
)
_RAW_ANSWER_MAX_CHARS = 100  # a longer "answer" after #### is prose, not an answer
# Spans longer than this are not a final answer; the cap also keeps adversarial texts (thousands of nested
# \boxed{ or #### on one line) linear instead of quadratic.
_SPAN_MAX_CHARS = 200
# A minus a space away from its digits right after "=" or ":" is their sign ("= - 5"), not a subtraction
_DETACHED_SIGN = re.compile(r"(?<=[=:])(\s*)[-\u2212]\s+(?=\d)")
_MAX_MARKERS = 64  # only the last 64 markers are tried: a degenerate "#### #### ..." loop stays cheap


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each "{" -> index of its matching "}" (one pass; unclosed groups are absent)."""
    pairs, stack = {}, []
    for m in re.finditer(r"[{}]", text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            pairs[stack.pop()] = m.start()
    return pairs


def _lone_number(tail: str) -> str | None:
    """The canonical number of a text holding exactly one number and no operator beside it ("7", "7 apples",
    "- 5": a minus a space from its digits is their sign here); else None."""
    tail = re.sub(r"^[-\u2212]\s+(?=\d)", "-", tail.strip())
    tokens = list(_NUMBER.finditer(tail))
    if len(tokens) == 1 and not _MATH_LEFTOVER.search(_NUMBER.sub(" ", tail)):
        return _canonical_from_match(tokens[0])
    return None


def _answer_from_delimited(span: str, allow_words: bool) -> str | None:
    """Answer inside \\boxed{...} or on a #### line: the value after the last "=" ("x = 5" -> 5). A non-numeric
    answer comes back raw; with allow_words=False one containing plain words ("followed by the answer") is None."""
    tail = span.rsplit("=", 1)[-1].strip()
    canonical = _lone_number(tail)
    if canonical is not None:
        return canonical
    raw = " ".join(tail.split()).strip(" .$")
    if len(raw) > _RAW_ANSWER_MAX_CHARS or not re.search(r"[\w\\]", raw):  # "####" or "..." is no answer
        return None
    if not allow_words and re.search(r"(?<![\\A-Za-z])[A-Za-z]{2,}", raw):  # words, not a \command: prose
        return None
    return raw


def _answer_from_prose(text: str, end: int) -> str | None:
    """The first number right after "answer is"/"Answer:", if only a short gap separates them; where that number
    opens an equation in the same clause ("The answer is 3 + 4 = 7."), the lone number after its last "=", as in
    a \\boxed{} span (it read 3). "The answer is - 5": -5."""
    m = _NUMBER.search(text, end, end + _PROSE_GAP_MAX_CHARS + 1)  # bounded: many markers stay linear
    m = m and _NUMBER.match(text, m.start())  # re-match on the full text: the window may cut the number
    if m is None:
        return None
    gap = text[end : m.start()]
    if len(gap) > _PROSE_GAP_MAX_CHARS or re.search(r"[.!?;](?:\s|$)|\d", gap):
        return None
    if len(re.findall(r"[A-Za-z]+", gap.replace("\\boxed", "").replace("\\text", ""))) > _PROSE_GAP_MAX_WORDS:
        return None
    rest = text[m.end() : m.end() + _SPAN_MAX_CHARS]
    stop = re.search(r"[.!?;,](?:\s|$)|\n", rest)  # the clause: up to a sentence end, a ", " or a line end
    clause = text[m.start() : m.end() + (stop.start() if stop else len(rest))]
    if "=" in clause:
        after = _lone_number(clause.rsplit("=", 1)[-1])
        if after is not None:
            return after
    canonical = _canonical_from_match(m)
    if canonical is not None and not m.group("sign") and re.search(r"(?:^|\s)[-\u2212]\s+$", gap):
        canonical = canonical[1:] if canonical.startswith("-") else ("0" if canonical == "0" else "-" + canonical)
    return canonical


def _marked_candidates(text: str) -> list[tuple[int, str, int]]:
    """(position, kind, content start) of every answer marker in the text."""
    found = [(m.start(), "hashes", m.end()) for m in _HASHES.finditer(text)]
    found += [(m.start(), "boxed", m.end()) for m in _BOXED.finditer(text)]
    found += [(m.start(), "prose", m.end()) for m in _PROSE.finditer(text)]
    return sorted(found)


def extract_final_answer(text: str | None) -> str | None:
    """The final answer a completion commits to (see module docstring), canonical if numeric; None if none."""
    if not text:
        return None
    text = _normalize_latex_numbers(text)
    text = _DETACHED_SIGN.sub(r"\1-", text)  # "3 - 8 = - 5": the last number is -5
    markers = _marked_candidates(text)
    closing = _closing_braces(text) if any(kind == "boxed" for _, kind, _ in markers) else {}
    for _, kind, start in reversed(markers[-_MAX_MARKERS:]):  # the last marker that yields an answer wins
        if kind == "hashes":
            line_end = text.find("\n", start, start + _SPAN_MAX_CHARS)
            line = text[start : line_end if line_end >= 0 else start + _SPAN_MAX_CHARS]
            answer = _answer_from_delimited(line, allow_words=False)  # an echoed instruction is not an answer
        elif kind == "boxed":
            end = closing.get(start - 1)  # start - 1 is the "{" of "\boxed{"; None: unclosed (truncated)
            too_long = end is None or end - start > _SPAN_MAX_CHARS
            answer = None if too_long else _answer_from_delimited(text[start:end], allow_words=True)
        else:
            answer = _answer_from_prose(text, start)
        if answer is not None:
            return answer
    for m in reversed(list(_NUMBER.finditer(text))):  # no usable marker: the last number
        canonical = _canonical_from_match(m)
        if canonical is not None:
            return canonical
    return None


# ---------------------------------------------------------------------------------------------------------------
# comparison

REL_TOL = Fraction(1, 10**6)
_MATH_VERIFY_MAX_CHARS = 200  # math_verify runs without its signal timeout (see below): bound its input instead


def _exact_value(text: str) -> Fraction | None:
    m = _WHOLE_NUMBER.fullmatch(_normalize_latex_numbers(text))
    if m is None:
        return None
    value = _fraction_from_match(_NUMBER.fullmatch(m.group("token")))
    return value if isinstance(value, Fraction) else None


def _math_verify_equal(pred: str, truth: str) -> bool:
    if len(pred) > _MATH_VERIFY_MAX_CHARS or len(truth) > _MATH_VERIFY_MAX_CHARS:
        return False
    try:
        from math_verify import parse, verify

        # Timeouts off: math_verify's timeouts use SIGALRM, which fails outside the main thread (eval workers).
        # The inputs are short marked answers, so parsing stays bounded; silence the "timeout disabled" warning.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        gold = parse(f"${truth}$", parsing_timeout=None)
        target = parse(f"${pred}$", parsing_timeout=None)
        return bool(gold) and bool(target) and bool(verify(gold, target, timeout_seconds=None))
    except Exception:  # math_verify/sympy can raise on odd input; an unparseable answer is not a match
        return False


def answers_match(pred: str | None, truth: str | None) -> bool:
    """pred == truth numerically: exactly when both are integers (1000001 is not 1000000), else |a - b| <= 1e-6
    max(|a|, |b|) (0.333333 against 1/3); math_verify only for non-numeric answers."""
    if pred is None or truth is None:
        return False
    a, b = _exact_value(pred), _exact_value(truth)
    if a is not None and b is not None:
        if a.denominator == 1 and b.denominator == 1:
            return a == b
        return abs(a - b) <= REL_TOL * max(abs(a), abs(b))  # exact rationals: no float rounding or overflow
    if " ".join(pred.split()) == " ".join(truth.split()):
        return True
    return _math_verify_equal(pred, truth)
