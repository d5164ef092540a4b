"""Voice-assistant command grammar with held-out entity splits.

Every slot is a finite list of phrases, so the whole vocabulary of a split
can be enumerated (tests check the alphabet and split disjointness). Entity
lists come in named splits: `base` builds the base model's data; the
`novel_*` lists are never used by `base`, so later updates can teach words
the base model never heard. Numbers are spelled out: the tokenizer has no digits.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from device_agent.errors import ConfigError

# --- numbers ----------------------------------------------------------------
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def spell(n: int) -> str:
    """0..99 as words ("forty two")."""
    if not 0 <= n < 100:
        raise ConfigError(f"spell() takes 0..99, got {n}")
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])


def _plural(n: int, unit: str) -> str:
    return f"{spell(n)} {unit}" + ("" if n == 1 else "s")


_DURATIONS = tuple(
    [_plural(n, "minute") for n in range(1, 60)]
    + [_plural(n, "second") for n in (5, 10, 15, 20, 30, 40, 45, 50)]
    + [_plural(n, "hour") for n in range(1, 13)]
    + ["half an hour", "an hour and a half", "a minute and a half", "one hour and fifteen minutes",
       "two hours and thirty minutes", "ninety seconds"]
)
_CLOCK_TIMES = tuple(
    [f"{spell(h)} o'clock" for h in range(1, 13)]
    + [f"{spell(h)} {spell(m)}" for h in range(1, 13) for m in (15, 30, 45)]
    + [f"{spell(h)} oh {spell(m)}" for h in range(1, 13) for m in (5,)]
    + [f"half past {spell(h)}" for h in range(1, 13)]
    + [f"quarter to {spell(h)}" for h in range(1, 13)]
)
_DAY_PARTS = ("in the morning", "in the evening", "at night", "a m", "p m", "tomorrow", "tonight", "")
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TEMPERATURES = tuple(f"{spell(n)} degrees" for n in range(60, 81))
_PERCENT = tuple(f"{spell(n)} percent" for n in (10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90))

# --- entities, in splits ----------------------------------------------------
_NAMES = {
    "base": (
        "mom", "dad", "grandma", "grandpa", "alice", "andrew", "anna", "ben", "carlos", "charlotte",
        "chris", "daniel", "david", "ella", "emily", "emma", "ethan", "grace", "hannah", "henry",
        "isabel", "jack", "james", "jessica", "john", "julia", "kate", "kevin", "laura", "leo",
        "liam", "lily", "lucy", "maria", "mark", "mary", "matthew", "michael", "mia", "nathan",
        "noah", "olivia", "oliver", "paul", "peter", "rachel", "robert", "ryan", "sam", "sarah",
        "sophia", "steve", "thomas", "tom", "victoria", "william", "zoe", "doctor brown",
        "aunt susan", "uncle joe",
    ),
    # Rarer names, none a word anywhere in `base`: the "new contacts" update.
    "novel": (
        "anselm", "beatrix", "bjorn", "chiara", "cormac", "dashiell", "delphine", "esperanza",
        "farida", "gideon", "hamish", "ines", "jovan", "kenji", "leandro", "marisol", "nadia",
        "oskar", "petra", "quentin", "rafael", "saoirse", "tobias", "ulrich", "valentina",
        "wendell", "ximena", "yusuf", "zofia", "priya", "mateo", "ingrid",
    ),
}
_ARTISTS = {
    "base": (
        "taylor swift", "the beatles", "miles davis", "ed sheeran", "adele", "beyonce", "coldplay",
        "elton john", "queen", "michael jackson", "madonna", "drake", "rihanna", "bruno mars",
        "lady gaga", "frank sinatra", "johnny cash", "dolly parton", "bob dylan", "elvis presley",
        "the rolling stones", "pink floyd", "led zeppelin", "abba", "david bowie", "shakira",
        "justin bieber", "ariana grande", "katy perry", "the weeknd", "john coltrane",
        "ella fitzgerald", "louis armstrong", "norah jones", "u two", "metallica", "nirvana",
        "the eagles", "whitney houston", "stevie nicks",
    ),
    "novel": (
        "billie eilish", "kendrick lamar", "radiohead", "fleetwood mac", "nina simone",
        "bob marley", "aretha franklin", "dua lipa", "harry styles", "olivia rodrigo",
        "arctic monkeys", "daft punk", "gorillaz", "tame impala", "lana del rey", "sza",
        "hozier", "lorde", "bon iver", "mumford and sons", "duke ellington", "chet baker",
    ),
}
_PLACES = {
    "base": (
        "london", "paris", "new york", "boston", "chicago", "seattle", "san francisco",
        "los angeles", "miami", "denver", "austin", "dallas", "houston", "atlanta", "phoenix",
        "berlin", "madrid", "rome", "tokyo", "sydney", "toronto", "vancouver", "dublin",
        "amsterdam", "vienna", "prague", "lisbon", "oslo", "stockholm", "helsinki", "cairo",
        "mumbai", "delhi", "beijing", "shanghai", "seoul", "singapore", "mexico city",
        "rio de janeiro", "buenos aires", "cape town", "nairobi", "moscow", "athens", "istanbul",
        "manchester", "edinburgh", "glasgow", "portland", "philadelphia",
    ),
    "novel": (
        "reykjavik", "tbilisi", "ljubljana", "bratislava", "valparaiso", "montevideo",
        "kathmandu", "ulaanbaatar", "zanzibar", "marrakesh", "tallinn", "vilnius", "riga",
        "krakow", "gdansk", "antwerp", "bordeaux", "marseille", "palermo", "seville",
        "winnipeg", "halifax", "anchorage", "albuquerque", "savannah", "tucson",
    ),
}
# Shopping list items: the novel intent's own words, absent from `base`.
_ITEMS = (
    "eggs", "milk", "bread", "butter", "cheese", "apples", "bananas", "oranges", "tomatoes",
    "potatoes", "onions", "garlic", "carrots", "spinach", "lettuce", "rice", "pasta", "flour",
    "sugar", "salt", "pepper", "olive oil", "yogurt", "cereal", "chicken", "salmon", "beef",
    "coffee beans", "tea bags", "toilet paper", "paper towels", "dish soap", "toothpaste",
    "shampoo", "batteries", "avocados", "lemons", "strawberries", "blueberries", "peanut butter",
    "orange juice", "cucumbers", "broccoli", "mushrooms", "honey", "oatmeal",
)

_SLOTS: dict[str, tuple[str, ...]] = {
    "duration": _DURATIONS,
    "time": _CLOCK_TIMES,
    "daypart": _DAY_PARTS,
    "weekday": _WEEKDAYS,
    "temperature": _TEMPERATURES,
    "percent": _PERCENT,
    "level": tuple(spell(n) for n in range(1, 11)),
    "room": (
        "kitchen", "living room", "bedroom", "bathroom", "office", "garage", "hallway",
        "dining room", "basement", "nursery", "guest room", "porch", "attic", "laundry room",
    ),
    "light": ("lights", "lamp", "ceiling light", "floor lamp", "lamps"),
    "switchable": (
        "fan", "heater", "air conditioner", "tv", "television", "radio", "humidifier",
        "dishwasher", "coffee maker", "washing machine", "sprinklers", "air purifier",
    ),
    "color": ("red", "blue", "green", "warm white", "purple", "yellow", "pink", "cool white"),
    "opener": ("blinds", "curtains", "garage door", "shades", "window"),
    "lockable": ("front door", "back door", "side door", "garage door"),
    "on_off": ("on", "off"),
    "genre": (
        "jazz", "rock", "classical music", "pop music", "hip hop", "country music", "blues",
        "some relaxing music", "lofi beats", "reggae", "metal", "dance music", "folk music",
    ),
    "body": (
        "i'm running late", "i'll be home soon", "see you tomorrow", "call me back",
        "happy birthday", "on my way", "dinner is ready", "i'm outside", "thanks for everything",
        "let's meet at noon", "can you pick up the kids", "the meeting moved to friday",
        "don't forget your keys", "good night",
    ),
    "task": (
        "call the doctor", "take out the trash", "water the plants", "feed the cat",
        "walk the dog", "pay the rent", "check the mail", "book a haircut", "charge my phone",
        "lock the car", "send the report", "take my medicine", "pick up the kids",
        "renew my passport",
    ),
    "weather_q": (
        "what's the weather in", "what's the weather like in", "will it rain in",
        "is it going to snow in", "how hot is it in", "what's the temperature in",
        "do i need an umbrella in", "how windy is it in", "what's the forecast for",
    ),
    "when": ("today", "tomorrow", "this weekend", "tonight", "on monday", "on friday", "next week", "this afternoon"),
}

_INTENTS: dict[str, tuple[str, ...]] = {
    "timer": (
        "set a timer for {duration}", "start a {duration} timer", "timer for {duration}",
        "how much time is left on my timer", "cancel the timer", "pause the timer",
        "add {duration} to the timer", "set a {duration} timer for the oven",
    ),
    "alarm": (
        "set an alarm for {time} {daypart}", "wake me up at {time} {daypart}",
        "set an alarm for {time} on {weekday}", "cancel my alarm for {time}",
        "snooze the alarm", "turn off my alarm", "what time is my alarm set for",
        "set an alarm in {duration}",
    ),
    "call": (
        "call {name}", "call {name} on speaker", "phone {name}", "video call {name}",
        "dial {name}", "call {name} at work", "ring {name}", "give {name} a call",
    ),
    "message": (
        "text {name} {body}", "send a message to {name}", "send {name} a message saying {body}",
        "tell {name} {body}", "message {name} that {body}", "read my messages from {name}",
        "reply to {name} {body}",
    ),
    "music": (
        "play {artist}", "play some {artist}", "play music by {artist}", "play {genre}",
        "shuffle songs by {artist}", "put on {genre}", "play the latest album by {artist}",
        "play {artist} in the {room}", "who sings this song", "skip this song",
        "pause the music", "play the next song", "turn the volume up", "turn the volume down",
        "set the volume to {level}",
    ),
    "home": (
        "turn {on_off} the {light} in the {room}", "turn the {room} {light} {on_off}",
        "dim the {room} {light} to {percent}", "set the {room} {light} to {color}",
        "switch {on_off} the {switchable}", "turn {on_off} the {switchable} in the {room}",
        "set the thermostat to {temperature}", "set the {room} thermostat to {temperature}",
        "make it warmer in the {room}", "what's the temperature in the {room}",
        "open the {opener}", "close the {opener} in the {room}", "lock the {lockable}",
        "is the {lockable} locked", "set the fan to speed {level}", "turn up the heat",
    ),
    "weather": (
        "{weather_q} {place}", "{weather_q} {place} {when}", "what's the weather {when}",
        "will it rain {when}", "do i need a jacket {when}", "what's the weather like",
    ),
    "reminder": (
        "remind me to {task}", "remind me to {task} at {time}", "remind me in {duration} to {task}",
        "remind me to {task} on {weekday}", "what are my reminders for {when}",
        "delete the reminder to {task}",
    ),
    "clock": (
        "what time is it", "what time is it in {place}", "what's the date today",
        "what day is it", "how many days until {weekday}", "what's on my calendar {when}",
    ),
    "misc": (
        "tell me a joke", "what's the news", "stop", "never mind", "help", "good morning",
        "how are you", "what can you do", "thank you", "read me the headlines",
    ),
    # novel intent (absent from base); every item has a word base never uses.
    "shopping": (
        "add {item} to my shopping list", "put {item} on the grocery list",
        "add {item} and {item} to my shopping list", "remove {item} from my shopping list",
        "what's on my shopping list", "do i have {item} on my shopping list",
        "clear my shopping list", "we need {item}", "buy {item}",
    ),
}


@dataclass(frozen=True)
class Split:
    """Which intents a split uses and which entity list each entity slot draws from."""

    intents: tuple[str, ...]
    entities: dict[str, tuple[str, ...]] = field(default_factory=dict)


_BASE_ENTITIES = {"name": _NAMES["base"], "artist": _ARTISTS["base"], "place": _PLACES["base"]}
_BASE_INTENTS = ("timer", "alarm", "call", "message", "music", "home", "weather", "reminder", "clock", "misc")

SPLITS: dict[str, Split] = {
    "base": Split(_BASE_INTENTS, _BASE_ENTITIES),
    # Same text distribution as base; what is novel is the voices (see voices.py).
    "novel_accent": Split(_BASE_INTENTS, _BASE_ENTITIES),
    "novel_names": Split(
        ("call", "message", "music"),
        {"name": _NAMES["novel"], "artist": _ARTISTS["novel"], "place": _PLACES["base"]},
    ),
    "novel_places": Split(
        ("weather", "clock"),
        {"name": _NAMES["base"], "artist": _ARTISTS["base"], "place": _PLACES["novel"]},
    ),
    "novel_intent": Split(("shopping",), {"item": _ITEMS}),
}
# Entity lists a split exists to teach; held-out splits keep only templates
# that use one, so every utterance carries something new.
_FOCUS: dict[str, tuple[str, ...]] = {
    "novel_names": ("name", "artist"),
    "novel_places": ("place",),
    "novel_intent": (),  # every shopping template is new
}


def _slot_names(template: str) -> list[str]:
    return [part.split("}", 1)[0] for part in template.split("{")[1:]]


def templates(split: str = "base") -> list[str]:
    """All templates a split samples from, in a fixed order."""
    spec = _get(split)
    focus = _FOCUS.get(split)
    out = []
    for intent in spec.intents:
        for t in _INTENTS[intent]:
            if focus and not set(_slot_names(t)) & set(focus):
                continue
            out.append(t)
    return out


def slot_values(split: str = "base") -> dict[str, tuple[str, ...]]:
    """Every slot's value list for a split (entity lists overridden per split)."""
    return {**_SLOTS, **_get(split).entities}


def entity_sets(split: str) -> dict[str, frozenset[str]]:
    """The entity lists (names, artists, places, items) a split draws from."""
    return {k: frozenset(v) for k, v in _get(split).entities.items()}


def vocabulary(split: str = "base") -> set[str]:
    """Every word a split's commands can contain."""
    slots = slot_values(split)
    words: set[str] = set()
    for t in templates(split):
        names = _slot_names(t)
        literal = t
        for name in names:
            literal = literal.replace("{" + name + "}", " ", 1)
            for value in slots[name]:
                words.update(value.split())
        words.update(literal.split())
    return words


def sample_commands(n: int, seed: int, split: str = "base") -> list[str]:
    """n commands, deterministic in (seed, split). Intents are equally likely."""
    spec = _get(split)
    slots = slot_values(split)
    by_intent: dict[str, list[str]] = {}
    for t in templates(split):
        intent = next(i for i in spec.intents if t in _INTENTS[i])
        by_intent.setdefault(intent, []).append(t)
    intents = sorted(by_intent)
    rng = random.Random(f"{split}:{seed}")  # str seeds hash with sha512: stable across runs
    out = []
    for _ in range(n):
        template = rng.choice(by_intent[rng.choice(intents)])
        text = template
        for name in _slot_names(template):
            text = text.replace("{" + name + "}", rng.choice(slots[name]), 1)
        out.append(" ".join(text.split()))  # an empty {daypart} leaves a double space
    return out


def _get(split: str) -> Split:
    try:
        return SPLITS[split]
    except KeyError:
        raise ConfigError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}") from None
