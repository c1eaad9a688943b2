"""The built-in arithmetic task: disjoint splits, reserved phrasings, determinism, a solver that is always right."""

import pytest

from alignkit import AlignkitError
from alignkit.pairs.verify import wrong_step
from alignkit.tasks.base import Item
from alignkit.tasks.arithmetic import PHRASINGS, Arithmetic


def _key(op, item):
    a, b = item.meta["a"], item.meta["b"]
    return (op, min(a, b), max(a, b)) if op in ("add", "mul") else (op, a, b)


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_splits_share_no_question_and_reserve_phrasings(op):
    task = Arithmetic(op, 2, ("en", "zh"), size={"train": 1500, "heldout": 300})
    train, heldout = task.items("train"), task.items("heldout")
    assert len(train) == 1500 and len(heldout) == 300
    assert not {_key(op, i) for i in train} & {_key(op, i) for i in heldout}
    assert len({i.id for i in train}) == 1500
    assert not any(i.meta["reserved"] for i in train)
    assert any(i.meta["reserved"] for i in heldout)
    reserved = {p for lang in ("en", "zh") for p in PHRASINGS[(op, lang)][1]}
    for item in train:  # no training question is worded like a reserved phrasing
        assert not any(item.question == p.format(a=item.meta["a"], b=item.meta["b"]) for p in reserved)
    assert {i.language for i in heldout} == {"en", "zh"}


def test_split_does_not_depend_on_seed_or_size():
    small = Arithmetic("add", 2, size={"train": 50, "heldout": 20}, seed=1)
    large = Arithmetic("add", 2, size={"train": 2000, "heldout": 500}, seed=7)
    held = {_key("add", i) for i in large.items("heldout")}
    assert not {_key("add", i) for i in small.items("train")} & held


def test_same_arguments_same_items():
    assert Arithmetic("mul", 2, seed=3).items("train") == Arithmetic("mul", 2, seed=3).items("train")
    assert Arithmetic("mul", 2, seed=3).items("train") != Arithmetic("mul", 2, seed=4).items("train")


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
@pytest.mark.parametrize("digits", [1, 2, 3, 4])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_solver_is_right_and_ends_in_the_answer_line(op, digits, lang):
    task = Arithmetic(op, digits, (lang,), size={"train": 30, "heldout": 5})
    for item in task.items("train"):
        solution = task.solve(item)
        assert task.evaluate(item, solution), (item.question, solution)
        assert task.reward(item, solution) == 1.0
        last = solution.splitlines()[-1]
        assert last == ("Answer: " if lang == "en" else "答案：") + item.answer
        assert len(solution.splitlines()) >= 2  # reasoning, not just the answer
        assert wrong_step(solution) is None  # every written step is true


def test_solver_text():
    task = Arithmetic("add", 2)
    item = next(i for i in task.items("train") if i.meta["a"] % 10 + i.meta["b"] % 10 >= 10)
    a, b = item.meta["a"], item.meta["b"]
    assert task.solve(item) == (
        f"Tens: {a // 10 * 10} + {b // 10 * 10} = {a // 10 * 10 + b // 10 * 10}.\n"
        f"Ones: {a % 10} + {b % 10} = {a % 10 + b % 10}.\n"
        f"Total: {a // 10 * 10 + b // 10 * 10} + {a % 10 + b % 10} = {a + b}.\n"
        f"Answer: {a + b}"
    )
    sub = Arithmetic("sub", 2)
    item = Item("y", "What is 32 - 75?", "-43", meta={"a": 32, "b": 75})
    assert sub.solve(item) == "Tens: 30 - 70 = -40.\nOnes: 2 - 5 = -3.\nTotal: -40 - 3 = -43.\nAnswer: -43"


def test_evaluate_and_reward_agree_and_reject_wrong_answers():
    task = Arithmetic("sub", 2)
    item = task.items("train")[0]
    wrong = str(int(item.answer) + 1)
    assert not task.evaluate(item, f"Answer: {wrong}") and task.reward(item, f"Answer: {wrong}") == 0.0
    assert task.evaluate(item, f"I think it is {item.answer}.")


def test_bad_arguments():
    with pytest.raises(AlignkitError, match="unknown op"):
        Arithmetic("div", 2)
    with pytest.raises(AlignkitError, match="only .* distinct"):
        Arithmetic("add", 1, size={"train": 1000}).items("train")
    with pytest.raises(AlignkitError, match="unknown split"):
        Arithmetic("add", 2).items("test")


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
@pytest.mark.parametrize("digits", [1, 2, 3])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_slip_is_one_mistake_carried_to_a_wrong_answer(op, digits, lang):
    import random

    task = Arithmetic(op, digits, (lang,), size={"train": 30, "heldout": 5})
    rng, kinds = random.Random(0), set()
    for item in task.items("train"):
        right, slipped = task.solve(item), task.slip(item, rng)
        assert not task.evaluate(item, slipped), (item.question, slipped)
        good, bad = right.splitlines(), slipped.splitlines()
        assert len(good) == len(bad)  # the same steps, in the same words
        assert bad[-1].startswith("Answer: " if lang == "en" else "答案：")
        changed = [i for i, (x, y) in enumerate(zip(good, bad)) if x != y]
        assert changed and changed[-1] == len(bad) - 1  # the slip reaches the answer line
        # Either one written step is false, or every step is true and one used a misread operand digit.
        a, b = str(item.meta["a"]), str(item.meta["b"])
        if wrong_step(slipped) is None:
            first = bad[changed[0]]
            assert op != "mul" and first != good[changed[0]] and (a not in first or b not in first or digits == 1)
            kinds.add("operand")
        else:
            kinds.add("false step")
    assert "false step" in kinds
    again = [task.slip(i, random.Random(0)) for i in task.items("train")[:5]]
    assert again == [task.slip(i, random.Random(0)) for i in task.items("train")[:5]]  # seeded: reproducible
