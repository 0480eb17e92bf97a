"""Writes scripts/prompts/{train,heldout}.txt: the chat prompts the default D2F model is distilled and judged on.

Sources: the first line of every conversation in PyPI's chatterbot-corpus (English, BSD) and a seeded mix of
instruction templates over everyday topics. Usage: python scripts/make_prompts.py CORPUS_DIR
(CORPUS_DIR: the unpacked wheel of `pip download --no-deps chatterbot-corpus==1.3.3`).
"""
import random
import sys
from pathlib import Path

import yaml

TOPICS = """the ocean, volcanoes, bees, the moon, rainbows, coffee, bread, bicycles, trains, libraries, chess,
the internet, electricity, gravity, photosynthesis, the human heart, sleep, exercise, recycling, forests,
deserts, rivers, mountains, winter, summer, music, painting, poetry, friendship, honesty, money, banks,
computers, smartphones, email, passwords, robots, airplanes, rockets, the sun, stars, clouds, rain, snow,
earthquakes, dinosaurs, cats, dogs, horses, birds, fish, gardens, tomatoes, apples, rice, cheese, tea,
chocolate, soap, vaccines, doctors, teachers, schools, maths, fractions, history, the Roman Empire,
Ancient Egypt, pyramids, castles, maps, compasses, clocks, calendars, the seasons, weather forecasts,
batteries, magnets, light, sound, colours, mirrors, glass, paper, books, newspapers, museums, cities,
villages, farms, cooking pasta, baking a cake, saving energy, learning a language, public speaking,
job interviews, time management, budgeting, camping, swimming, running, football, the Olympics, recipes,
kindness, patience, curiosity, teamwork, a rainy day, a lost key, a new neighbour, a birthday party""".split(",")
TEMPLATES = [
    "What is {t}?", "Explain {t} to a child.", "Give me three facts about {t}.", "Why is {t} important?",
    "Write a short poem about {t}.", "Write a two-sentence story about {t}.", "Describe {t} in one paragraph.",
    "What are the pros and cons of {t}?", "How would you teach someone about {t}?",
    "List some interesting questions about {t}.", "Summarize what most people know about {t}.",
    "Tell me a fun fact about {t}.", "What is a common misconception about {t}?",
]


def main(corpus: str) -> None:
    questions = []
    for f in sorted(Path(corpus, "chatterbot_corpus", "data", "english").glob("*.yml")):
        for conv in yaml.safe_load(f.read_text()).get("conversations", []):
            if conv and isinstance(conv[0], str) and 8 <= len(conv[0].strip()) <= 200:
                questions.append(conv[0].strip())
    rng = random.Random(0)
    made = [tpl.format(t=t.strip()) for t in TOPICS for tpl in rng.sample(TEMPLATES, 5)]
    prompts = list(dict.fromkeys(questions + made))
    rng.shuffle(prompts)
    out = Path(__file__).parent / "prompts"
    (out / "heldout.txt").write_text("\n".join(prompts[:240]) + "\n")
    (out / "train.txt").write_text("\n".join(prompts[240:]) + "\n")
    print(f"{len(prompts)} prompts: 240 held out, {len(prompts) - 240} for training")


if __name__ == "__main__":
    main(sys.argv[1])
