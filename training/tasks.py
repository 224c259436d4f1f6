"""The default chat tasks: generated questions whose answers a program can check.

Every task splits its questions once, with a fixed seed that does not depend on the training
seed, into a training part and a held-out part. Held-out questions never appear in pretraining
text or in the fine-tuning set, so evaluation measures what the model generalised.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

SPLIT_SEED = 20240601  # fixed: the held-out questions are the same for every run
HELD_OUT_FRACTION = 0.1

# The project's own glossary, in the project's words. Short on purpose: a tiny model can learn it.
GLOSSARY: dict[str, str] = {
    "tensor": "an array of numbers with any number of dimensions",
    "gradient": "how much the loss changes when a weight changes",
    "loss": "one number that says how wrong the model is",
    "epoch": "one full pass over the training data",
    "batch": "a group of examples processed together",
    "learning rate": "the size of each step the optimizer takes",
    "optimizer": "the rule that updates weights from gradients",
    "neuron": "a weighted sum of inputs followed by a nonlinearity",
    "activation": "the nonlinear function applied after a layer",
    "overfitting": "learning the training data but failing on new data",
    "token": "a piece of text the model reads as one unit",
    "tokenizer": "the program that turns text into tokens",
    "embedding": "a learned vector that stands for a token",
    "attention": "a layer that lets each token look at other tokens",
    "transformer": "a network built from attention and feed-forward layers",
    "pretraining": "training a model to predict the next token on raw text",
    "fine-tuning": "further training of a pretrained model on a narrow task",
    "lora": "training small low-rank matrices beside frozen weights",
    "perplexity": "the exponential of the average next-token loss",
    "backpropagation": "the chain rule applied from the loss back to every weight",
    "dropout": "randomly zeroing activations during training",
    "quantization": "storing weights with fewer bits",
    "inference": "running a trained model to get answers",
    "dataset": "the collection of examples a model learns from",
}

GLOSSARY_TRAIN_QUESTIONS = [
    "What is {term}?", "What does {term} mean?", "Explain {term} briefly.",
    "Tell me what {term} is.", "What is meant by {term}?", "Give the meaning of {term}.",
]
GLOSSARY_HELD_OUT_QUESTIONS = ["Define {term}.", "What is the meaning of {term}?"]

# Common short English words for the reversal task.
WORDS = (
    "able about above after again air all also animal answer apple area army baby back ball bank "
    "base bear bed bird black blue boat body bone book box boy bread bring brown build burn bus "
    "call camp card care carry case cat cell chair child city class clean clear clock cloud coat "
    "cold color come cook cool corn count cover cow cross cup cut dark data day deep desk dog door "
    "down draw dream dress drink drive drop dry duck dust early earth east easy edge egg end even "
    "eye face fact fall farm fast fear feel field fill film find fine fire fish flag flat floor "
    "flow fly food foot form fox free fresh friend frog fruit game garden gate gift girl give glad "
    "glass goat gold good grass gray great green ground group grow hair half hand happy hard hat "
    "head hear heart heat help high hill hold hole home hope horse hot hour house ice idea inch "
    "iron island jump keep key kind king lake lamp land large last late laugh lead leaf learn left "
    "leg letter light line lion list little long look love low lucky main make map mark meat milk "
    "mind moon morning mother mountain mouse move music name near neck nest new nice night noise "
    "north nose note number ocean open orange page paint paper park party path pen pencil people "
    "pick picture pig pink plan plant play point pool poor press print queen quick quiet rain read "
    "red rest rice rich ring river road rock roof room root rope round rule run salt sand school "
    "sea seat seed shape sheep ship shoe shop short show side sign silver simple sing sister size "
    "sky sleep slow small smile snow soft song sound south space speak spring square star stone "
    "store storm story street strong sugar summer sun sweet table tail talk tall tea team test "
    "thin tiger time tired tooth top town toy train tree truck turn under unit upper valley voice "
    "wait walk wall warm wash watch water wave week west wheel white wide wind window winter wise "
    "wolf wood word work world write yard year yellow young zero"
).split()


# General knowledge, to measure what a fine-tune makes a pretrained chat model forget: a
# question and the words (any one, "|"-separated, whole words, any case) a right reply contains.
# Never trained on. A 135M-parameter model gets about half of them right.
GENERAL_HELD_OUT = {
    "What is the capital of France?": "paris",
    "How many days are in a week?": "seven|7",
    "What color is the sky on a clear day?": "blue",
    "What is the opposite of hot?": "cold",
    "Which planet do we live on?": "earth",
    "What do bees make?": "honey",
    "How many legs does a spider have?": "eight|8",
    "What is the largest ocean on Earth?": "pacific",
    "Who wrote Romeo and Juliet?": "shakespeare",
    "What is frozen water called?": "ice",
    "What gas do plants take in from the air?": "carbon dioxide|co2",
    "At what temperature in Celsius does water boil?": "100",
    "How many continents are there?": "seven|7",
    "What is the capital of Japan?": "tokyo",
    "What language is spoken in Spain?": "spanish",
    "What is the largest planet in the solar system?": "jupiter",
    "Which animal is known as the king of the jungle?": "lion|lions",
    "What do you call a baby cat?": "kitten|kittens",
    "How many hours are in a day?": "24|twenty-four",
    "What is the capital of Italy?": "rome",
    "Which season comes after winter?": "spring",
    "Which organ pumps blood through the body?": "heart",
    "What is the closest star to Earth?": "sun",
    "Which instrument has 88 keys?": "piano",
    "What is the capital of Germany?": "berlin",
    "Who painted the Mona Lisa?": "leonardo|vinci",
    "What is the tallest animal in the world?": "giraffe|giraffes",
    "What color is a ripe banana?": "yellow",
    "How many sides does a triangle have?": "three|3",
    "What is the capital of the United Kingdom?": "london",
    "What is H2O commonly called?": "water",
    "Which animal says moo?": "cow|cows",
    "What is the fastest land animal?": "cheetah|cheetahs",
    "What is the currency of the United States?": "dollar|dollars",
    "What is the largest mammal?": "whale|whales",
    "What is the chemical symbol for oxygen?": "o",
    "How many minutes are in an hour?": "60|sixty",
    "What do caterpillars turn into?": "butterfly|butterflies|moth|moths",
    "What is the capital of Spain?": "madrid",
    "What is the main language spoken in Brazil?": "portuguese",
}
# Other everyday requests, never evaluated: a fine-tune can mix in the base model's own replies
# to them ("self-distillation") so that it keeps answering like it did.
GENERAL_PROMPTS = [
    "Tell me a fun fact about space.", "How do I boil an egg?",
    "Give me a tip for learning to code.", "What is a good name for a dog?",
    "Explain what a computer is.", "Write a short poem about rain.",
    "What is the capital of Canada?", "How can I sleep better?", "What is photosynthesis?",
    "Why is exercise good for you?", "Describe a cat in one sentence.", "What is a noun?",
    "How do airplanes fly?", "What is the weather like in summer?",
    "Give me a healthy breakfast idea.",
    "What does a doctor do?", "How many planets are in the solar system?", "What is gravity?",
    "Tell me a joke.", "What is the difference between a lake and an ocean?",
    "How do I make a cup of tea?", "What is the moon made of?", "Why do leaves change color?",
    "What is a vegetable?", "How do I say hello in French?", "What is a volcano?",
    "Suggest a book for children.", "What is the internet?", "How do fish breathe?",
    "What should I pack for a beach trip?", "What is a rainbow?", "How do I write a good email?",
    "What is the biggest desert?", "Why do we need water?", "What is music?",
    "Give me three words that rhyme with cat.", "What is an atom?", "How do birds fly?",
    "What is a healthy snack?", "Explain what a map is.", "What are clouds made of?",
    "How do I stay focused while studying?", "What is a triangle?", "What do pandas eat?",
    "What is a river?", "How does a bicycle work?", "What is a museum?", "Why is the ocean salty?",
    "What is the difference between weather and climate?", "What is a mammal?",
    "How do I plant a tree?", "What is electricity?", "Name three colors.",
    "What is a good way to save money?", "What is the largest country in the world?",
    "How do bees help flowers?", "What is a library?", "What is chess?",
    "How do I apologize to a friend?", "What is a calendar?", "What is an island?",
    "How long does it take the Earth to orbit the Sun?", "What is a habit?",
    "Explain what a recipe is.", "What is the tallest mountain?", "What are vitamins?",
    "How do magnets work?", "What is a poem?", "Why do we dream?", "What is a fruit?",
    "How do I tie my shoes?", "What is a forest?", "What is a thunderstorm?",
    "Give me a tip for public speaking.", "What is a robot?", "What is history?",
    "What do astronauts do?", "How do I make friends?", "What is a computer program?",
    "What is the sound a dog makes?", "What is an ecosystem?", "Why do we have seasons?",
]


@dataclass(frozen=True)
class Example:
    task: str
    question: str
    answer: str

    def correct(self, reply: str) -> bool:
        """Exact match (see normalize_answer); a general question's reply only needs one of its
        accepted words."""
        if self.task == "general":
            return any(re.search(rf"\b{re.escape(w)}\b", reply.lower())
                       for w in self.answer.split("|"))
        return normalize_answer(reply) == normalize_answer(self.answer)

    def messages(self) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": self.question},
            {"role": "assistant", "content": self.answer},
        ]


def _split(items: list, rng: random.Random) -> tuple[list, list]:
    items = list(items)
    rng.shuffle(items)
    n_held = max(1, round(len(items) * HELD_OUT_FRACTION))
    return items[n_held:], items[:n_held]


def arithmetic_examples(op: str) -> tuple[list[Example], list[Example]]:
    """All 'What is A op B?' for A, B in 0-99, split into (train, held_out)."""
    task = {"+": "addition", "-": "subtraction"}[op]
    pairs = [(a, b) for a in range(100) for b in range(100)]
    train, held = _split(pairs, random.Random(f"{SPLIT_SEED}-{task}"))

    def make(a: int, b: int) -> Example:
        value = a + b if op == "+" else a - b
        return Example(task, f"What is {a} {op} {b}?", str(value))

    return [make(*p) for p in train], [make(*p) for p in held]


def expression(ex: Example) -> str:
    """The sum or difference an arithmetic question asks for: "What is 58 + 1?" -> "58 + 1"."""
    return ex.question.removeprefix("What is ").removesuffix("?")


def has_one_digit_operand(ex: Example) -> bool:
    """True for arithmetic questions such as "What is 58 + 1?"."""
    if ex.task not in ("addition", "subtraction"):
        return False
    a, _, b = expression(ex).split()
    return min(len(a), len(b)) == 1


def reverse_examples() -> tuple[list[Example], list[Example]]:
    train, held = _split(sorted(set(WORDS)), random.Random(f"{SPLIT_SEED}-reverse"))

    def make(w: str) -> Example:
        return Example("reverse", f"Reverse the word {w}.", w[::-1])

    return [make(w) for w in train], [make(w) for w in held]


def glossary_examples() -> tuple[list[Example], list[Example]]:
    """Every term is taught; held-out questions ask about it in a phrasing never trained on."""

    def make(template: str, term: str) -> Example:
        return Example("glossary", template.format(term=term), GLOSSARY[term])

    train = [make(t, term) for term in GLOSSARY for t in GLOSSARY_TRAIN_QUESTIONS]
    held = [make(t, term) for term in GLOSSARY for t in GLOSSARY_HELD_OUT_QUESTIONS]
    return train, held


def sum3_examples() -> tuple[list[Example], list[Example]]:
    """'What is A + B + C?' for A, B, C in 0-49, split into (train, held_out): a step past the
    two-number sums, for the reinforcement-learning stage (training/rl.py) to improve."""
    triples = [(a, b, c) for a in range(50) for b in range(50) for c in range(50)]
    train, held = _split(triples, random.Random(f"{SPLIT_SEED}-sum3"))

    def make(a: int, b: int, c: int) -> Example:
        return Example("sum3", f"What is {a} + {b} + {c}?", str(a + b + c))

    return [make(*t) for t in train], [make(*t) for t in held]


def general_examples() -> tuple[list[Example], list[Example]]:
    """Training part: everyday prompts whose answers come from the base model itself (empty
    here); held-out part: general-knowledge questions with the words a right reply contains."""
    train = [Example("general", q, "") for q in GENERAL_PROMPTS]
    held = [Example("general", q, words) for q, words in GENERAL_HELD_OUT.items()]
    return train, held


TASKS = {
    "addition": lambda: arithmetic_examples("+"),
    "subtraction": lambda: arithmetic_examples("-"),
    "reverse": reverse_examples,
    "glossary": glossary_examples,
    "sum3": sum3_examples,
    "general": general_examples,
}
# The tasks whose questions and answers the built-in fine-tune set teaches (general's answers
# are the base model's own; see training.chatdata.self_distilled_rows).
TAUGHT = ("addition", "subtraction", "reverse", "glossary")


def train_examples(tasks: tuple[str, ...] | list[str] = TAUGHT) -> list[Example]:
    return [ex for name in tasks for ex in TASKS[name]()[0]]


def held_out_examples(per_task: int | None = None, seed: int = 0) -> list[Example]:
    """Held-out questions, at most `per_task` of each task (a fixed sample for a given seed)."""
    out: list[Example] = []
    for make in TASKS.values():
        held = make()[1]
        if per_task is not None and len(held) > per_task:
            held = random.Random(seed).sample(held, per_task)
        out.extend(held)
    return out


def normalize_answer(text: str) -> str:
    """Exact match ignores surrounding whitespace and a trailing period only."""
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def fact_lines(task: str) -> list[str]:
    """Plain-text facts for the pretraining corpus, from the training split of one task only.

    A base model learns arithmetic, spelling and vocabulary from raw text the way real LLMs do;
    fine-tuning then teaches it to answer in the chat format.
    """
    train = TASKS[task]()[0]
    if task in ("addition", "subtraction"):
        return [f"{expression(ex)} = {ex.answer}" for ex in train]
    if task == "reverse":
        return [f"{ex.question.removeprefix('Reverse the word ').removesuffix('.')} backwards "
                f"is {ex.answer}" for ex in train]
    if task == "glossary":
        return [f"In machine learning, {term} means {definition}."
                for term, definition in GLOSSARY.items()]
    raise ValueError(f"task {task!r} has no facts for pretraining text")
