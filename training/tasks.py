"""The default chat tasks: generated questions whose answers a program can check.

Every task splits its questions once, with a fixed seed that does not depend on the training
seed, into a training part and a held-out part. Held-out questions never appear in pretraining
text or in the fine-tuning set, so evaluation measures what the model generalised.
"""

from __future__ import annotations

import random
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


@dataclass(frozen=True)
class Example:
    task: str
    question: str
    answer: str

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


TASKS = {
    "addition": lambda: arithmetic_examples("+"),
    "subtraction": lambda: arithmetic_examples("-"),
    "reverse": reverse_examples,
    "glossary": glossary_examples,
}


def train_examples() -> list[Example]:
    return [ex for make in TASKS.values() for ex in make()[0]]


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
                f"is {ex.answer}"
                for ex in train]
    return [f"In machine learning, {term} means {definition}." for term,
            definition in GLOSSARY.items()]
