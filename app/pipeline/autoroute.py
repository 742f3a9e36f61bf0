"""Auto mode: decide between long (extended chain-of-thought) and short reasoning from the prompt alone.

Used only when a request says nothing about reasoning. `text` is the last user message's text. The
rules run in this order and the first that fires decides (the reason is what `RouteDecision.reason`
says):

 0. a chat UI's background task is short: Open WebUI asks the chat's model for a title, tags,
    follow-up questions, search queries or an autocompletion around each turn, quoting the chat
    (which may hold maths or code) in a `<chat_history>` block after a `### Task:` heading, and for
    an emoji in voice calls ("ui background task");
 1. nothing to read: an image alone takes the mode its profile says (`image_alone`: the bundled
    model is an arithmetic model and its images are worksheets, so long; short elsewhere) ("image
    without a prompt"); empty text is "empty";
 2. code syntax (fences, `def f(`, `=>`, tracebacks, `FooError`, SQL statements, method calls) or a
    programming request (write/implement/fix/convert... + function/algorithm/query/a language) ("code");
 3. rewriting, translating, summarising or writing prose, asked for in the opening 120 characters,
    is short even when the quoted text holds numbers or maths ("rewriting or translation",
    "summarising", "writing");
 4. an image with a problem-like prompt (solve, answer, homework, equation, value of...) ("image with
    a problem prompt");
 5. proofs: prove, disprove, show that, by induction, rigorous, give an argument, "explain why"
    about numbers ("proof");
 6. arithmetic: an expression with an operator (`123 + 456`, `5 × 6`, `2^10`; the ambiguous `99-7`
    and `1/3`, which are also dates and ranges, only after "what is"/"compute"... or before "="),
    operators in words (`7 times 8`, `3 plus 4`, `9 squared`, `15% of 240`), or
    add/subtract/multiply/divide with numbers ("arithmetic expression");
 7. maths notation: LaTeX, `x^2`, `3x + 1`, `f(x)`, `AB = 7` ("maths notation");
 8. a bare definition question (`What is a prime number?`, `Explain recursion like I'm five`) with
    no digits or operators is short even about maths or code ("definition");
 9. programming topics without code (time complexity, "reverse a linked list", "npm install fails")
    ("code");
10. maths vocabulary: terms that are always maths (integral, modulo, how many ways, find the sum...),
    or broader ones (area, average, prime...) in a text with a number ("maths");
11. unit conversions with a number ("unit conversion");
12. word problems: at least two numbers and a quantity question (how many/much/long/far/old...,
    find, what is the total/price...), or three numbers and any question ("word problem");
13. puzzles and deductions: knights and knaves, liars, weighings, river crossings, syllogisms,
    implications, kinship riddles, "taller than" chains, "think carefully"; and scheduling, seating
    or assignment under constraints when numbers are involved ("multi-step logic");
14. otherwise short: "image description", "greeting" or "conversational".

Cost: the regexes are precompiled and linear (bounded repetitions only), and a long prompt is read
as its first 4000 and last 2000 characters, where the question usually is, so a call stays in the
microseconds. Accuracy and latency on the labelled set: `python -m bench.router_accuracy`
(docs/router.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.profiles.profile import Mode

__all__ = ["RouteDecision", "route"]


_HEAD_CHARS = 4000
_TAIL_CHARS = 2000
_OPENING_CHARS = 120  # where an instruction such as "Translate ..." must appear to count


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The chosen reasoning mode and a short human phrase saying why."""

    mode: Mode
    reason: str


def _rx(pattern: str, flags: int = 0) -> re.Pattern[str]:
    # Patterns meet lower-cased text unless they say otherwise: re.IGNORECASE is several times slower.
    return re.compile(pattern, flags)


# A number only starts where no digit, comma or point precedes it, so a match cannot restart inside a
# long digit run: that would make one regex quadratic on "1111…".
_NUM = r"(?<![\d.,])\d+(?:[.,]\d+)*"
_NUM_WORD = (
    rf"(?:{_NUM}|zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
    r"thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|"
    r"sixty|seventy|eighty|ninety|hundred|thousand)"
)
_LANGUAGES = (
    r"python|javascript|typescript|java|kotlin|swift|rust|golang|go|c\+\+|c#|c|ruby|php|perl|scala|"
    r"haskell|elixir|lua|r|matlab|bash|shell|powershell|sql|postgres(?:ql)?|mysql|sqlite|html|css|"
    r"react|vue|angular|django|flask|fastapi|node(?:\.js)?|numpy|pandas"
)
_UNITS = (
    r"km|kilomet(?:er|re)s?|miles?|mi|m|met(?:er|re)s?|cm|mm|inch(?:es)?|in|feet|foot|ft|yards?|kg|"
    r"kilograms?|g|grams?|pounds?|lbs?|oz|ounces?|lit(?:er|re)s?|l|ml|gallons?|cups?|°?[cf]|celsius|"
    r"fahrenheit|kelvin|degrees|seconds?|minutes?|hours?|days?|weeks?|months?|years?|mph|km/h|kph|"
    r"bytes?|kb|mb|gb|tb|acres?|hectares?|square \w+"
)

# --- 0. chat UIs' background tasks ------------------------------------------------------------------
# Open WebUI's default task templates (its config.py, DEFAULT_*_PROMPT_TEMPLATE) open with "### Task:"
# and quote the chat in <chat_history> within their first ~1,700 characters; its emoji task opens
# with the sentence below.
_UI_TASK = _rx(
    r"^### task:[\s\S]{0,3000}?<chat_history>|"
    r"^your task is to reflect the speaker's likely facial expression through a fitting emoji"
)

# --- 2. code ---------------------------------------------------------------------------------------
_CODE_SYNTAX = _rx(
    r"```|\bdef \w+\s*\(|\bfunction\s*\w*\s*\([^)\n]{0,80}\)\s*\{|=>|#include\s*<|"
    r"\b(?:public|private|static)\s+(?:void|int|class|static)\b|\b(?:const|let|var)\s+\w+\s*=|"
    r"\bconsole\.log\(|\bSystem\.out\.|\bprintf?\(|Traceback \(most recent call last\)|"
    r"\b[A-Z]\w*(?:Error|Exception)\b|\b(?:fatal|error|warning):|\bsegfault|segmentation fault|"
    r"\b[a-z_]\w*\.[a-z_]\w*\([^)\n]{0,80}\)|^[ \t]*(?:import [\w.]+|from [\w.]+ import)|"
    r"\b(?:for|while|if)\s*\([^)\n]{1,80}\)\s*\{|^[ \t]{4,}(?:if|for|return|while)\b",
    re.MULTILINE,
)
_SQL = _rx(r"\b(?:SELECT|INSERT|UPDATE|DELETE)\b[\s\S]{0,300}?\b(?:FROM|INTO|SET|WHERE)\b")
_CODE_TASK = _rx(
    r"\b(?:write|implement|code|coding|build|create|generate|give me|show me|fix|debug|refactor|"
    r"optimi[sz]e|convert|port|translate|how (?:do|can|would|should) (?:i|you|we))\b[^.?!\n]{0,80}?"
    rf"\b(?:function|method|algorithm|regex|regular expression|(?:sql )?query|queries|script|"
    r"program (?:that|to|which)|hook|component|endpoint|unit tests?|cli|module|snippet|recursion|"
    r"binary search|linked list|binary tree|hash ?map|cache|parser|decorator|class (?:in|that|with)|"
    rf"data structure|api|{_LANGUAGES})(?![\w+#])"
)
_CODE_TOPIC = _rx(
    r"\b(?:time complexity|space complexity|big[- ]o\b|algorithm|leetcode|stack overflow error|"
    r"null pointer|off-by-one|race condition|deadlock|memory leak|merge conflict|compiler?|"
    r"compilation|(?:reverse|traverse|invert|serialize) (?:a |an |the )?(?:linked list|binary tree|"
    r"tree|array|graph)|(?:python|java|c\+\+|rust|javascript|typescript|bash) (?:script|program|code)|"
    rf"in (?:{_LANGUAGES})\?|(?:git|npm|pip|docker|django|react|node|sql|postgres|mysql|kubernetes|rust|"
    r"python|javascript|typescript|java|compiler|borrow checker|linter|type checker)\b[^.?!\n]{0,60}"
    r"\b(?:fails?|error|errors|crash(?:es)?|broken|not working|doesn't work|won't|says|slow|throws?|"
    r"query|table|migration|complains?|panics?|warns?)|\bsql\b)"
)

# --- 3. prose tasks --------------------------------------------------------------------------------
_TRANSLATE = _rx(
    r"\b(?:translate|translation|traduce|traduis|übersetze|how (?:do|would|can) (?:you|i) say|"
    r"rewrite|rephrase|paraphrase|reword|proofread|shorten|lengthen|"
    r"simplify this (?:sentence|text|paragraph)|fix the (?:grammar|spelling|typos)|"
    r"correct (?:the|my) (?:grammar|spelling)|make (?:this|it) (?:shorter|longer|more|less|sound)|"
    r"turn (?:this|these) (?:\w+ )?into|change (?:this|it) (?:to|into)|in (?:british|american) english)\b"
)
_SUMMARISE = _rx(r"\b(?:summari[sz]e|summary|sum up|tl;?dr|condense|key points|main points|gist)\b")
_WRITE_PROSE = _rx(
    r"\b(?:write|draft|compose|help me write)\b[^.?!\n]{0,40}?\b(?:e-?mail|letter|note|message|"
    r"post|poem|story|haiku|limerick|essay|reply|speech|toast|caption|description|bio|tweet|text|"
    r"review|song|lyrics|slogan|toast)s?\b"
)

# --- 4. images -------------------------------------------------------------------------------------
_IMAGE_PROBLEM = _rx(
    r"\b(?:solve|solution|answer|compute|calculate|check my (?:working|work|answer)|homework|"
    r"worksheet|equation|problem|exercise|question \d|total|sum|math|maths|arithmetic|how many|value of|find|"
    r"comes? to|"
    r"diagram|graph|fractions?)\b"
)

# --- 5. proofs -------------------------------------------------------------------------------------
_PROOF = _rx(
    r"\b(?:prove|proving|disprove|show that|demonstrate that|by induction|rigorous(?:ly)?|"
    r"give (?:me )?a proof|proof (?:of|that)|q\.?e\.?d|(?:give|make) an argument|justify)\b|"
    r"\b(?:explain why|why (?:is|are|does|do))\b[^?\n]{0,80}\b(?:numbers?|odd|even|prime|integers?|"
    r"irrational|rational|divisible|equal|sum|product|infinite|0\.9)"
)

# --- 6. arithmetic ---------------------------------------------------------------------------------
# Numbers glued to letters (`x^2 - 5x`, `_0^1`) are algebra or notation, which rule 7 names.
_STRONG_EXPRESSION = _rx(
    rf"(?<![a-z_^]){_NUM}\s*\)?\s*(?:\*\*|[+*×÷^·])\s*\(?\s*[-−]?\s*{_NUM}(?![a-z_])|"  # 123 + 456, 2^10
    rf"(?<![a-z_^]){_NUM}\s*\)?\s+[-−/]\s+\(?\s*{_NUM}(?![a-z_])|"  # 250 - 87 (spaced: not a date/range)
    rf"{_NUM}\s+x\s+{_NUM}\b"  # 2.5 x 4
)
_CUED_EXPRESSION = _rx(
    rf"\b(?:what(?:'s| is)|how much is|calculate|compute|evaluate|work out)\s+{_NUM}[-−/]{_NUM}|"
    rf"{_NUM}[-−/]{_NUM}\s*="
)
_WORD_ARITHMETIC = _rx(
    rf"\b{_NUM_WORD}\s+(?:plus|minus|times|multiplied by|divided by|over|mod|modulo|"
    rf"to the power of)\s+-?{_NUM_WORD}\b|"
    rf"\b{_NUM_WORD}\s+(?:squared|cubed)\b|\b(?:square|cube) root of\s+-?{_NUM}|"
    rf"{_NUM}\s*(?:%|percent) of\s+\$?{_NUM}|"
    rf"\b(?:add|subtract|multiply|divide)\s+-?{_NUM}\s+(?:and|from|by|to|into)\s+-?{_NUM}|"
    rf"\b(?:sum|product|difference|quotient|average|mean) of\s+(?:the numbers\s+)?-?{_NUM}"
)

# --- 7. maths notation -----------------------------------------------------------------------------
_MATH_NOTATION = _rx(
    r"\\(?:frac|int|sum|sqrt|lim|prod|cdot|times|pi|infty|binom)\b|\$[^$\n]{1,200}\$|[∫∑√∞≤≥≠π]|"
    r"\b\d*[a-z]\s*(?:\^|\*\*)\s*\(?\d|[a-z]²|\)\s*\^\s*\d|\b\d+[a-z]\s*[-+=<>]|"
    r"\b[a-z]\s*[-+]\s*\d+\s*[=<>)]|\b[a-z]\s*=\s*-?\d|\b[a-z]\([a-z0-9]\)|\|\s*\d*[a-z]\s*[-+]|"
    r"\b[A-Z]{2}\s*=\s*\d"
)

# --- 8. definitions --------------------------------------------------------------------------------
_DEFINITION = _rx(
    r"^\s*(?:what(?:'s| is| are)|whats|define|explain|describe)\b(?!.*\bwhy\b)[^0-9=+*/^]{0,60}$|"
    r"\b(?:in (?:plain|simple) (?:english|terms|words)|like i'?m (?:five|5)|eli5|"
    r"to a (?:non-technical|child|kid|beginner))\b[^0-9=+*/^]{0,40}$"
)

# --- 9. maths vocabulary ---------------------------------------------------------------------------
_MATH_ALWAYS = _rx(
    r"\b(?:integral|integrate|derivative|differentiate|d[xy]/d[xt]|limit as|converges?|taylor|"
    r"polynomial|quadratic|logarithm|log base|eigen\w*|determinant|expected value|permutations?|"
    r"how many ways|remainder when|divisible by|modulo|gcd|lcm|greatest common|least common|"
    r"factorial|perfect square|trailing zeros|solve for|system of equations|equations?|"
    r"inequalit(?:y|ies)|probability|positive integers|real numbers|positive reals|"
    r"let [a-z](?:, ?[a-z]){0,4} be|find the (?:sum|product|value|area|volume|length|angle|number|"
    r"probability|derivative|integral|roots?|solutions?|remainder))\b"
)
_MATH_NEAR_NUMBER = _rx(
    r"\b(?:solve|simplify|expand|factor(?:i[sz]e)?|roots?|area|perimeter|volume|radius|diameter|"
    r"triangle|circle|square|median|average|mean|percent(?:age)?|interest|subsets?|diagonals?|digits?|"
    r"chance|odds|maximum|minimum|sum|product|series|vector|matrix|prime|primes|multiple|"
    r"divisors?|fraction|ratio|hands|outcomes|arrangements|combinations|sequences)\b"
)

# --- 10. units -------------------------------------------------------------------------------------
_UNIT_CONVERSION = _rx(
    rf"\b{_NUM}\s*(?:{_UNITS})(?:\s+(?:per|an?)\s+\w+)?\s+(?:in|to|into)\s+(?:{_UNITS})\b|\bconvert\b[^.?!\n]{{0,40}}\d|"
    rf"\bhow many (?:{_UNITS})\b[^.?!\n]{{0,30}}\bin\b[^.?!\n]{{0,20}}\d"
)

# --- 11. word problems -----------------------------------------------------------------------------
_NUMBER = _rx(rf"(?<![a-z_]){_NUM}")
_QUANTITY_QUESTION = _rx(
    r"\b(?:how (?:many|much|long|far|old|fast|high|tall|often)|when (?:do|does|will)|find|work out|"
    r"figure out|determine|what (?:is|was|will be|are|were|does)\b[^.?!\n]{0,40}?\b(?:price|cost|"
    r"total|area|speed|pace|average|probability|chance|remainder|sum|difference|value|length|height|"
    r"age|number|amount|rate|take[- ]home|profit|change)|whats? the\b[^.?!\n]{0,30}?\b(?:price|cost|"
    r"total|take[- ]home|pace|profit))\b"
)
_QUESTION = _rx(r"\?|\b(?:how|what|whats|which|when|who|find|calculate)\b")

# --- 12-13. logic and planning ---------------------------------------------------------------------
_LOGIC = _rx(
    r"\b(?:puzzle|brain ?teaser|knights? and knaves?|always lies|tells the truth|truth[- ]tellers?|"
    r"liars?|counterfeit|balance scale|weighings?|cross(?:es)? (?:a|the) river|river crossing|sudoku|"
    r"who owns|deduce|logically|syllogism|think (?:carefully|hard|it through)|reason carefully|"
    r"show (?:your|the) work(?:ing)?|prisoners|tower of hanoi|measure exactly|"
    r"how (?:do|can|would) (?:i|you|we) (?:measure|identify|determine|find out|figure out|tell which)|"
    r"implies|if and only if|contrapositive|necessary and sufficient|"
    r"(?:all|no|some) \w+ are \w+[^.?!\n]{0,60}\b(?:all|no|some) \w+ are|"
    r"(?:father|mother|son|daughter|brother|sister|uncle|aunt)'s "
    r"(?:father|mother|son|daughter|brother|sister)|"
    r"you (?:may|can) (?:only )?(?:pick|ask|take|weigh|use|move|open) (?:one|two|three|only|a single))\b"
)
_COMPARATIVE = _rx(r"\b\w+er than\b")
_WHO_WHICH = _rx(r"\b(?:who|which)\b")
_PLANNING = _rx(
    r"\b(?:schedule|assign|allocate|arrange|order|sequence|critical path|plan|timetable|rota|roster|seat)\b"
    r"[^\n]{0,200}?\b(?:can't|cannot|must|needs? (?:to|the same)|at most|at least|minimal|"
    r"minimi[sz]e|optimal|fewest|minimum|constraints?|so that no|no two|adjacent|next to each other)\b"
)

# --- 14. short reasons -----------------------------------------------------------------------------
_GREETING = _rx(
    r"^\s*(?:hi|hello|hey|hiya|yo|howdy|good (?:morning|afternoon|evening|night)|thanks|thank you|"
    r"bye|goodbye|cheers)\b"
)


def route(text: str, *, has_image: bool = False, image_alone: Mode = "short") -> RouteDecision:
    """Pick long or short reasoning for a request that did not say; see the module docstring."""
    view = text if len(text) <= _HEAD_CHARS + _TAIL_CHARS else f"{text[:_HEAD_CHARS]}\n{text[-_TAIL_CHARS:]}"
    view = view.strip()
    if not view:
        if has_image:
            return RouteDecision(image_alone, "image without a prompt")
        return _short("empty")
    low = view.lower()
    if _UI_TASK.match(low):
        return _short("ui background task")
    if _CODE_SYNTAX.search(view) or _SQL.search(view) or _CODE_TASK.search(low):
        return _long("code")
    opening = low[:_OPENING_CHARS]
    if _TRANSLATE.search(opening):
        return _short("rewriting or translation")
    if _SUMMARISE.search(opening):
        return _short("summarising")
    if _WRITE_PROSE.search(opening):
        return _short("writing")
    if has_image and _IMAGE_PROBLEM.search(low):
        return _long("image with a problem prompt")
    if _PROOF.search(low):
        return _long("proof")
    if _STRONG_EXPRESSION.search(low) or _CUED_EXPRESSION.search(low) or _WORD_ARITHMETIC.search(low):
        return _long("arithmetic expression")
    if _MATH_NOTATION.search(view):
        return _long("maths notation")
    if _DEFINITION.search(low):
        return _short("image description" if has_image else "definition")
    if _CODE_TOPIC.search(low):
        return _long("code")
    numbers = _count(_NUMBER, low, up_to=3)
    if _MATH_ALWAYS.search(low) or (numbers and _MATH_NEAR_NUMBER.search(low)):
        return _long("maths")
    if numbers and _UNIT_CONVERSION.search(low):
        return _long("unit conversion")
    if (numbers >= 2 and _QUANTITY_QUESTION.search(low)) or (numbers >= 3 and _QUESTION.search(low)):
        return _long("word problem")
    if _LOGIC.search(low) or _comparison_chain(low) or (numbers and _PLANNING.search(low)):
        return _long("multi-step logic")
    if has_image:
        return _short("image description")
    if _GREETING.search(low):
        return _short("greeting")
    return _short("conversational")


def _count(pattern: re.Pattern[str], text: str, *, up_to: int) -> int:
    """Matches of `pattern` in `text`, counting no further than `up_to`."""
    count = 0
    for count, _ in enumerate(pattern.finditer(text), start=1):
        if count >= up_to:
            break
    return count


def _comparison_chain(text: str) -> bool:
    """Several "taller than" facts and a question about the order: a deduction, not a lookup."""
    return _count(_COMPARATIVE, text, up_to=2) >= 2 and _WHO_WHICH.search(text) is not None


def _long(reason: str) -> RouteDecision:
    return RouteDecision("long", reason)


def _short(reason: str) -> RouteDecision:
    return RouteDecision("short", reason)
