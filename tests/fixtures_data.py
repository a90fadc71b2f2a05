"""A small, deterministic, varied English dialogue corpus for tests (written by code, not downloaded)."""
from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = {
    "food": (["pizza", "sushi", "pasta", "tacos", "curry", "salad"],
             ["what did you eat for dinner ?", "do you like cooking ?", "any good restaurants near you ?"],
             ["i had {x} last night , it was great", "i love making {x} at home", "there is a nice {x} place downtown"]),
    "weather": (["rain", "snow", "sunshine", "wind", "fog", "heat"],
                ["how is the weather today ?", "is it cold where you live ?", "did you see the forecast ?"],
                ["lots of {x} here today", "we expect {x} all week", "i really enjoy the {x} honestly"]),
    "sports": (["soccer", "tennis", "basketball", "running", "swimming", "golf"],
               ["do you play any sports ?", "did you watch the game ?", "what is your favorite team ?"],
               ["i play {x} every weekend", "i watched {x} on tv yesterday", "{x} keeps me in shape"]),
    "travel": (["japan", "italy", "canada", "peru", "norway", "kenya"],
               ["have you traveled recently ?", "where would you like to go ?", "what was your best trip ?"],
               ["i went to {x} last summer", "i want to visit {x} next year", "{x} was the best trip of my life"]),
    "music": (["jazz", "rock", "piano", "guitar", "hip hop", "opera"],
              ["what music do you listen to ?", "do you play an instrument ?", "any concerts coming up ?"],
              ["i listen to {x} all day", "i have played {x} since i was a kid", "there is a {x} concert on friday"]),
    "pets": (["dog", "cat", "parrot", "hamster", "rabbit", "turtle"],
             ["do you have any pets ?", "are you a dog person ?", "what is your pet called ?"],
             ["my {x} is called max", "i have a lazy {x} at home", "i always wanted a {x}"]),
}
FOLLOW_UPS = ["that sounds fun !", "oh really ? tell me more", "nice , i should try that", "wow , i did not know that",
              "haha that is cool", "me too , i love it"]


def make_dialogues(n: int = 60, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    out = []
    for i in range(n):
        topic = topics[i % len(topics)]
        things, questions, answers = TOPICS[topic]
        turns = []
        for _ in range(rng.randint(2, 3)):
            x = rng.choice(things)
            turns.append(rng.choice(questions))
            turns.append(rng.choice(answers).format(x=x))
        if rng.random() < 0.5:
            turns.append(rng.choice(FOLLOW_UPS))
        out.append({"id": f"d{i}", "turns": turns})
    return out


def write_jsonl(path: Path, dialogues: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in dialogues), encoding="utf-8")
    return path


def without_timings(value):
    """A metrics dict less its wall-clock entries (train_seconds, sittings, ...), which no two runs share."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items()
                if not (k.endswith("seconds") or k.endswith("_s") or k in ("speed", "timings", "sittings"))}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value
