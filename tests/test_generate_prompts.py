"""The built-in prompt set: the shipped file is what the builder makes; it is large, varied, unique, and every slice
mixes every kind."""

import json
from collections import Counter

from hf_minitron.generate import load_prompts
from hf_minitron.prompts import BUILTIN_FILE, builtin_prompts
from hf_minitron.prompts.build import build_prompts


def test_shipped_file_is_what_the_builder_makes():
    shipped = [json.loads(line) for line in BUILTIN_FILE.read_text(encoding="utf-8").splitlines()]
    assert shipped == build_prompts() == builtin_prompts()


def test_prompts_are_many_unique_and_varied():
    prompts = builtin_prompts()
    texts = [p["prompt"] for p in prompts]
    assert len(prompts) >= 2400
    assert len(set(texts)) == len(texts) and len({p["id"] for p in prompts}) == len(prompts)
    kinds = Counter(p["kind"] for p in prompts)
    assert set(kinds) == {"question", "instruction", "creative", "passage", "continuation", "math", "code", "advice"}
    assert max(kinds.values()) < 0.4 * len(prompts)  # no kind dominates
    assert all(10 <= len(t) <= 1000 for t in texts)
    # distinct openings: the set is not one template with the blanks filled in
    assert len({" ".join(t.split()[:3]) for t in texts}) > 300


def test_every_tenth_mixes_every_kind():
    prompts = builtin_prompts()
    n = len(prompts) // 10
    for start in range(0, 10 * n, n):
        assert len({p["kind"] for p in prompts[start:start + n]}) == 8, start


def test_load_prompts_builtin_gives_user_turns_in_file_order():
    prompts = load_prompts("builtin", limit=5)
    assert prompts == [[{"role": "user", "content": p["prompt"]}] for p in builtin_prompts()[:5]]
