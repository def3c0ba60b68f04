"""Write the small example datasets in this folder (deterministic; run from the repository root).

    python examples/train/make_sample_data.py

alpaca.jsonl, chat.jsonl, sharegpt.jsonl and text.jsonl hold the same facts in the four formats
`swiftplan train --data` reads. They are tiny on purpose: enough to see the loss fall on a small model.
"""

from __future__ import annotations

import json
from pathlib import Path

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("India", "New Delhi"),
    ("China", "Beijing"), ("Brazil", "Brasilia"), ("Mexico", "Mexico City"), ("Ireland", "Dublin"), ("Austria", "Vienna"),
]  # fmt: skip
SUMS = [(a, b) for a in range(1, 6) for b in range(2, 7, 2)]


def facts() -> list[tuple[str, str, str]]:
    """(instruction, input, output) triples."""
    rows = [("What is the capital of the country?", country, f"The capital of {country} is {city}.")
            for country, city in CAPITALS]  # fmt: skip
    rows += [("Add the two numbers.", f"{a} and {b}", f"{a} plus {b} is {a + b}.") for a, b in SUMS]
    return rows


def main() -> None:
    here = Path(__file__).parent
    rows = facts()
    write = lambda name, items: (here / name).write_text("".join(json.dumps(i) + "\n" for i in items))  # noqa: E731
    write("alpaca.jsonl", [{"instruction": i, "input": x, "output": o} for i, x, o in rows])
    write("chat.jsonl", [{"messages": [{"role": "system", "content": "Answer briefly."},
                                       {"role": "user", "content": f"{i} {x}"},
                                       {"role": "assistant", "content": o}]} for i, x, o in rows])  # fmt: skip
    write("sharegpt.jsonl", [{"conversations": [{"from": "human", "value": f"{i} {x}"}, {"from": "gpt", "value": o}]}
                             for i, x, o in rows])  # fmt: skip
    write("text.jsonl", [{"text": f"Q: {i} {x}\nA: {o}"} for i, x, o in rows])


if __name__ == "__main__":
    main()
