"""Writes humaneval.jsonl and mbpp.jsonl: small code datasets in the HumanEval and MBPP formats,
written for oxrl (not copied from those benchmarks). Run: python3 make_code_data.py"""
import json

HUMANEVAL = [
    ("add_pairs", 'def add_pairs(xs: list) -> list:\n    """Return the sums of adjacent elements.\n    >>> add_pairs([1, 2, 4])\n    [3, 6]\n    """\n',
     "    return [a + b for a, b in zip(xs, xs[1:])]\n",
     "def check(candidate):\n    assert candidate([1, 2, 4]) == [3, 6]\n    assert candidate([]) == []\n    assert candidate([5]) == []\n    assert candidate([-1, 1, -1]) == [0, 0]\n"),
    ("count_vowels", 'def count_vowels(s: str) -> int:\n    """Count the vowels (a, e, i, o, u, either case) in s.\n    >>> count_vowels("Hello")\n    2\n    """\n',
     "    return sum(1 for c in s.lower() if c in 'aeiou')\n",
     "def check(candidate):\n    assert candidate('Hello') == 2\n    assert candidate('') == 0\n    assert candidate('AEIOUxyz') == 5\n    assert candidate('rhythm') == 0\n"),
    ("is_palindrome", 'def is_palindrome(s: str) -> bool:\n    """Whether s reads the same backwards, ignoring case and non-letters.\n    >>> is_palindrome("A man, a plan, a canal: Panama")\n    True\n    """\n',
     "    t = [c.lower() for c in s if c.isalpha()]\n    return t == t[::-1]\n",
     "def check(candidate):\n    assert candidate('A man, a plan, a canal: Panama') is True\n    assert candidate('abc') is False\n    assert candidate('') is True\n    assert candidate('No lemon, no melon') is True\n"),
    ("running_max", 'def running_max(xs: list) -> list:\n    """The maximum of each prefix of xs.\n    >>> running_max([1, 3, 2, 5])\n    [1, 3, 3, 5]\n    """\n',
     "    out = []\n    for x in xs:\n        out.append(x if not out else max(out[-1], x))\n    return out\n",
     "def check(candidate):\n    assert candidate([1, 3, 2, 5]) == [1, 3, 3, 5]\n    assert candidate([]) == []\n    assert candidate([-2, -5]) == [-2, -2]\n"),
    ("fizzbuzz_count", 'def fizzbuzz_count(n: int) -> int:\n    """How many numbers in 1..n are divisible by 3 or 5.\n    >>> fizzbuzz_count(10)\n    5\n    """\n',
     "    return sum(1 for i in range(1, n + 1) if i % 3 == 0 or i % 5 == 0)\n",
     "def check(candidate):\n    assert candidate(10) == 5\n    assert candidate(0) == 0\n    assert candidate(15) == 7\n    assert candidate(100) == 47\n"),
    ("digit_sum", 'def digit_sum(n: int) -> int:\n    """Sum of the decimal digits of abs(n).\n    >>> digit_sum(-123)\n    6\n    """\n',
     "    return sum(int(c) for c in str(abs(n)))\n",
     "def check(candidate):\n    assert candidate(-123) == 6\n    assert candidate(0) == 0\n    assert candidate(9999) == 36\n"),
    ("merge_sorted", 'def merge_sorted(a: list, b: list) -> list:\n    """Merge two sorted lists into one sorted list.\n    >>> merge_sorted([1, 4], [2, 3, 5])\n    [1, 2, 3, 4, 5]\n    """\n',
     "    out, i, j = [], 0, 0\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n            out.append(b[j]); j += 1\n    return out + a[i:] + b[j:]\n",
     "def check(candidate):\n    assert candidate([1, 4], [2, 3, 5]) == [1, 2, 3, 4, 5]\n    assert candidate([], [1]) == [1]\n    assert candidate([1, 1], [1]) == [1, 1, 1]\n"),
    ("word_lengths", 'def word_lengths(s: str) -> dict:\n    """Map each distinct word of s (split on whitespace) to its length.\n    >>> word_lengths("to be or")\n    {\'to\': 2, \'be\': 2, \'or\': 2}\n    """\n',
     "    return {w: len(w) for w in s.split()}\n",
     "def check(candidate):\n    assert candidate('to be or') == {'to': 2, 'be': 2, 'or': 2}\n    assert candidate('') == {}\n    assert candidate('a  bbb a') == {'a': 1, 'bbb': 3}\n"),
    ("rotate_left", 'def rotate_left(xs: list, k: int) -> list:\n    """Rotate xs left by k places (k may exceed the length).\n    >>> rotate_left([1, 2, 3, 4], 1)\n    [2, 3, 4, 1]\n    """\n',
     "    if not xs:\n        return []\n    k %= len(xs)\n    return xs[k:] + xs[:k]\n",
     "def check(candidate):\n    assert candidate([1, 2, 3, 4], 1) == [2, 3, 4, 1]\n    assert candidate([1, 2, 3], 5) == [3, 1, 2]\n    assert candidate([], 3) == []\n"),
    ("second_largest", 'def second_largest(xs: list):\n    """The second largest distinct value, or None if there is none.\n    >>> second_largest([4, 1, 4, 3])\n    3\n    """\n',
     "    vals = sorted(set(xs))\n    return vals[-2] if len(vals) > 1 else None\n",
     "def check(candidate):\n    assert candidate([4, 1, 4, 3]) == 3\n    assert candidate([7]) is None\n    assert candidate([2, 2]) is None\n    assert candidate([-1, -3]) == -3\n"),
]

MBPP = [
    ("Write a function to find the minimum of three numbers.", "min_of_three",
     "def min_of_three(a, b, c):\n    return min(a, b, c)",
     ["assert min_of_three(10, 20, 0) == 0", "assert min_of_three(19, 15, 18) == 15", "assert min_of_three(-10, -20, -30) == -30"]),
    ("Write a function to reverse the words of a sentence.", "reverse_words",
     "def reverse_words(s):\n    return ' '.join(reversed(s.split()))",
     ["assert reverse_words('python program') == 'program python'", "assert reverse_words('a b c') == 'c b a'", "assert reverse_words('one') == 'one'"]),
    ("Write a function to check whether a number is a perfect square.", "is_perfect_square",
     "def is_perfect_square(n):\n    if n < 0:\n        return False\n    r = int(n ** 0.5)\n    while r * r > n:\n        r -= 1\n    while (r + 1) * (r + 1) <= n:\n        r += 1\n    return r * r == n",
     ["assert is_perfect_square(10) == False", "assert is_perfect_square(36) == True", "assert is_perfect_square(0) == True", "assert is_perfect_square(-4) == False"]),
    ("Write a function to count the occurrences of a character in a string.", "count_char",
     "def count_char(s, c):\n    return s.count(c)",
     ["assert count_char('abcabc', 'a') == 2", "assert count_char('', 'x') == 0", "assert count_char('zzz', 'z') == 3"]),
    ("Write a function to compute the n-th Fibonacci number, with fib(0) = 0 and fib(1) = 1.", "fib",
     "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
     ["assert fib(0) == 0", "assert fib(1) == 1", "assert fib(10) == 55", "assert fib(30) == 832040"]),
    ("Write a function to remove duplicates from a list while keeping the first occurrence order.", "dedupe",
     "def dedupe(xs):\n    seen = set()\n    out = []\n    for x in xs:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out",
     ["assert dedupe([1, 2, 1, 3, 2]) == [1, 2, 3]", "assert dedupe([]) == []", "assert dedupe(['a', 'a']) == ['a']"]),
    ("Write a function to find the greatest common divisor of two positive integers.", "gcd",
     "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
     ["assert gcd(12, 17) == 1", "assert gcd(4, 6) == 2", "assert gcd(100, 75) == 25"]),
    ("Write a function to check whether all elements of a list are unique.", "all_unique",
     "def all_unique(xs):\n    return len(set(xs)) == len(xs)",
     ["assert all_unique([1, 2, 3]) == True", "assert all_unique([1, 2, 1]) == False", "assert all_unique([]) == True"]),
    ("Write a function to convert a list of digits into the integer they spell.", "digits_to_int",
     "def digits_to_int(ds):\n    n = 0\n    for d in ds:\n        n = n * 10 + d\n    return n",
     ["assert digits_to_int([1, 2, 3]) == 123", "assert digits_to_int([0, 7]) == 7", "assert digits_to_int([]) == 0"]),
    ("Write a function to return the list of prime numbers below n.", "primes_below",
     "def primes_below(n):\n    return [p for p in range(2, n) if all(p % d for d in range(2, int(p ** 0.5) + 1))]",
     ["assert primes_below(10) == [2, 3, 5, 7]", "assert primes_below(2) == []", "assert primes_below(20) == [2, 3, 5, 7, 11, 13, 17, 19]"]),
]

with open("humaneval.jsonl", "w") as f:
    for i, (entry, prompt, solution, tests) in enumerate(HUMANEVAL):
        f.write(json.dumps({"id": f"oxrl-humaneval/{i}", "prompt": prompt, "entry_point": entry,
                            "solution": solution, "tests": tests}) + "\n")

with open("mbpp.jsonl", "w") as f:
    for i, (text, entry, code, tests) in enumerate(MBPP):
        f.write(json.dumps({"id": f"oxrl-mbpp/{i}", "prompt": text, "entry_point": entry,
                            "solution": code, "tests": tests}) + "\n")
