"""Writes scripts/prompts/train_more.txt: more varied training prompts for the drafter (issue: the D2F
default beats AR), beside train.txt. Seeded templates over code tasks, lists, stories, instructions and
rewriting, none equal to a held-out prompt. Usage: python scripts/make_more_prompts.py [COUNT]
"""
import random
import sys
from pathlib import Path

from make_prompts import TEMPLATES, TOPICS

CODE_TASKS = """reverses a string, checks if a number is prime, counts the words in a sentence, returns the
largest item of a list, sorts a list of names, converts Celsius to Fahrenheit, removes duplicates from a
list, computes a factorial, reads a file line by line, checks if a word is a palindrome, sums the digits of
a number, finds the average of a list, merges two dictionaries, counts vowels in a text, returns the n-th
Fibonacci number, flattens a nested list, capitalizes every word, validates an email address, rounds a
price to two decimals, picks a random element from a list""".split(",")
CODE_TASKS = [" ".join(c.split()) for c in CODE_TASKS]
LANGS = ["Python", "JavaScript", "Python", "a shell script", "Python"]
CODE = ["Write a {l} function that {c}.", "How do I write code that {c} in {l}?",
        "Show a short {l} example that {c}.", "Explain step by step how a program {c}."]
LISTS = ["List five tips for {t}.", "Give me a checklist for {t}.", "Name three things to know about {t}.",
         "List the steps to get started with {t}.", "What are four words that describe {t}?"]
STORIES = ["Tell a short story about {t}.", "Write a bedtime story about {t}.", "Write a haiku about {t}.",
           "Write a limerick about {t}.", "Describe a day in the life of someone who loves {t}.",
           "Write a short dialogue between two friends about {t}."]
INSTRUCT = ["Write an email to a friend about {t}.", "Give advice to a beginner about {t}.",
            "Compare {t} and {u}.", "What do {t} and {u} have in common?", "Write a headline about {t}.",
            "Rewrite this sentence in a formal tone: I really like {t}.", "Answer in one sentence: what is {t}?",
            "Write a product description for something related to {t}.", "Plan a lesson about {t}.",
            "Translate into simple English: {t} is a topic of considerable interest."]


def main(count: int) -> None:
    here = Path(__file__).parent / "prompts"
    taken = set((here / "heldout.txt").read_text().splitlines()) | set((here / "train.txt").read_text().splitlines())
    rng = random.Random(1)
    topics = [" ".join(t.split()) for t in TOPICS]
    made = []
    while len(made) < count * 2:
        kind = rng.random()
        t, u = rng.sample(topics, 2)
        if kind < 0.2:
            made.append(rng.choice(CODE).format(l=rng.choice(LANGS), c=rng.choice(CODE_TASKS)))
        elif kind < 0.4:
            made.append(rng.choice(LISTS).format(t=t))
        elif kind < 0.6:
            made.append(rng.choice(STORIES).format(t=t))
        elif kind < 0.85:
            made.append(rng.choice(INSTRUCT).format(t=t, u=u))
        else:
            made.append(rng.choice(TEMPLATES).format(t=t))
    prompts = [p for p in dict.fromkeys(made) if p not in taken][:count]
    (here / "train_more.txt").write_text("\n".join(prompts) + "\n")
    print(f"{len(prompts)} prompts in train_more.txt")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1200)
