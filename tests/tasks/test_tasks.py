import json
import random
import re

import pytest

from thinkflow.catalog import build_task
from thinkflow.tasks import GSM8K, Addition, Countdown, TaskError
from thinkflow.tasks.countdown import ExprError, parse_expression


@pytest.mark.parametrize(
    "name,difficulty", [("addition", 1), ("addition", 3), ("addition", 12), ("countdown", 3), ("countdown", 5)]
)
def test_reference_traces_verify(name, difficulty):
    task = build_task(name, difficulty)
    train, test = task.splits(300, 30, seed=1)
    for p in train + test:
        assert task.verify(task.completion(p), p), (p, task.completion(p))


@pytest.mark.parametrize("name,difficulty", [("addition", 2), ("addition", 3), ("countdown", 3)])
def test_train_and_test_never_overlap(name, difficulty):
    task = build_task(name, difficulty)
    train, test = task.splits(5000, 500, seed=7)
    test_ids = {p.id for p in test}
    assert len(test_ids) == 500
    assert not test_ids & {p.id for p in train}
    # The prompt text must not leak across splits either (ids are canonical problems).
    assert not {p.prompt for p in test} & {p.prompt for p in train}


def test_generators_are_seeded_and_difficulty_changes_problems():
    a1, b1 = Addition(3).splits(50, 20, seed=3)
    a2, b2 = Addition(3).splits(50, 20, seed=3)
    assert [p.id for p in a1 + b1] == [p.id for p in a2 + b2]
    assert [p.id for p in Addition(3).splits(50, 20, seed=4)[1]] != [p.id for p in b1]
    assert all(len(p.prompt) == 2 * 5 + 2 for p in Addition(5).splits(10, 10, seed=0)[1])


def test_addition_trace_carries():
    p = Addition(3).make(999, 1)
    assert p.prompt == "999+001="
    assert p.trace == "01 01 01"
    assert Addition(3).completion(p) == "01 01 01>1000"


def test_small_space_errors_clearly_for_test_and_cycles_for_train():
    with pytest.raises(TaskError, match="too few distinct problems"):
        Addition(1).splits(10, 500, seed=0)
    train, test = Addition(1).splits(10_000, 20, seed=0)
    assert 0 < len(train) <= 80  # 100 problems in all, 20 held out


@pytest.mark.parametrize(
    "text,ok",
    [
        ("01 01 01>1000", True),
        ("anything>1000", True),  # the verifier scores the answer, not the trace
        ("01 01 01>01000", True),  # leading zeros are the same number
        ("01 01 01>1000 because", False),  # extra text after the answer
        ("01 01 01>１０００", False),  # fullwidth unicode digits are not ASCII digits
        ("01 01 01>١٠٠٠", False),  # Arabic-Indic digits
        ("01 01 01>1" + "0" * 10_000, False),  # huge number: no int() overflow, just wrong
        ("", False),
        ("01 01 01", False),  # no answer delimiter
        ("01 01 01>", False),
        (">1000\n>7", False),  # the last delimiter counts
        ("x>7\n>1000", True),
    ],
)
def test_addition_verifier_adversarial(text, ok):
    task = Addition(3)
    assert task.verify(text, task.make(999, 1)) is ok


def test_addition_huge_numbers_compare_exactly():
    task = Addition(30)
    p = task.make(10**30 - 1, 10**30 - 1)
    assert task.verify(">" + str(2 * 10**30 - 2), p)
    assert not task.verify(">" + str(2 * 10**30 - 1), p)


@pytest.mark.parametrize(
    "expr,value,lits",
    [("((4+3)+6)+7", 20, [4, 3, 6, 7]), ("8/4*3", 6, [8, 4, 3]), ("2*(3+4)", 14, [2, 3, 4]), (" 7 - 2 ", 5, [7, 2])],
)
def test_expression_parser(expr, value, lits):
    got, literals = parse_expression(expr)
    assert got == value and literals == lits


@pytest.mark.parametrize(
    "expr", ["__import__('os')", "2**3", "1/0", "(1+2", "1+", "9" * 7, "1" + "+1" * 200, "", "1 2", "os.system(1)"]
)
def test_expression_parser_rejects_non_arithmetic(expr):
    with pytest.raises(ExprError):
        parse_expression(expr)


def test_countdown_verifier():
    task = Countdown(3)
    prob = task.sample(random.Random(0))
    nums, target = prob.meta["numbers"], prob.meta["target"]
    assert task.verify(task.completion(prob), prob)
    assert not task.verify(f">{nums[0]}", prob)  # must use every number
    assert not task.verify(">" + "+".join(map(str, nums + [nums[0]])), prob)  # not twice
    assert not task.verify(">__import__('os').system('true')", prob)
    assert not task.verify(">" + "*".join(["9"] * 60), prob)  # too long: never parsed
    assert not task.verify(f">{target}", prob) or nums == [target]


def test_unknown_task_names_the_choices():
    with pytest.raises(TaskError, match="unknown task 'sudoku'.*addition"):
        build_task("sudoku")


def test_gsm8k_local_jsonl_and_extraction(gsm8k_dir):
    task = GSM8K(source=str(gsm8k_dir))
    train, test = task.splits(50, 30, seed=0)
    assert len(train) == 50 and len(test) == 30
    assert not {p.id for p in train} & {p.id for p in test}
    assert test[0].answer == "18"  # Janet's ducks
    for p in test:
        assert task.verify(task.completion(p), p)
    ans = test[0]
    assert task.verify("blah\n#### $18.00", ans)
    assert task.verify("#### 18 dollars", ans)
    assert not task.verify("#### 17", ans)
    assert not task.verify("The answer is 18", ans)  # no #### delimiter
    assert task.extract_answer("#### 1,234,567") == "1234567"
    assert task.extract_answer("#### -3.50") == "-3.5"
    assert task.extract_answer("#### " + "9" * 5000) == "9" * 5000


def test_gsm8k_hub_rows_without_marker_are_skipped_and_counted():
    rows = [
        {"question": "q1?", "answer": "1+1=2\n#### 2"},
        {"question": "q2?", "answer": "no final marker here"},
        {"question": "q3?", "answer": "#### not a number"},
        {"question": "q4?", "answer": "#### 4"},
    ]
    task = GSM8K()  # rows as datasets gives them for a hub id (local files are checked strictly instead)
    assert [p.answer for p in task._problems(rows, 10)] == ["2", "4"]
    assert task.skipped_rows == 2


def test_gsm8k_hub_source_is_not_checked_offline():
    assert GSM8K("openai/gsm8k").check() is None  # nothing to read here: datasets loads it in the stage


GOOD = {"question": "q1?", "answer": "1+1=2\n#### 2"}


@pytest.mark.parametrize(
    "lines,line,problem",
    [
        ([], None, "empty split (no records)"),
        (["", "  "], None, "empty split (no records)"),
        ([GOOD, '{"question": "q2?", "answer": "#### 3"'], 2, "bad JSON (Expecting ',' delimiter"),
        ([GOOD, "", "{oops}"], 3, "bad JSON (Expecting property name"),  # blank lines still count
        ([GOOD, {"answer": "#### 3"}], 2, "missing field 'question'"),
        ([{"question": "q?", "Answer": "#### 3"}], 1, "missing field 'answer'"),
        ([GOOD, {"question": "q2?", "answer": "no final marker here"}], 2, "answer has no '#### <number>'"),
        ([{"question": "q2?", "answer": "7 eggs\n#### seven"}], 1, "no number after '####' (got 'seven')"),
        ([{"question": None, "answer": "#### 3"}], 1, "field 'question' must be a non-empty string, got None"),
        ([["q?", "#### 3"]], 1, 'expected a JSON object with question and answer, got ["q?", "#### 3"]'),
    ],
)
def test_gsm8k_bad_local_data_names_file_line_and_problem(tmp_path, lines, line, problem):
    (tmp_path / "train.jsonl").write_text(json.dumps(GOOD) + "\n")
    bad = tmp_path / "test.jsonl"
    bad.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    where = f"{bad}, line {line}: " if line else f"{bad}: "
    task = GSM8K(source=str(tmp_path))
    with pytest.raises(TaskError, match=re.escape(where + problem)):
        task.check()  # before any compute (thinkflow.config.preflight)
    with pytest.raises(TaskError, match=re.escape(where + problem)):
        task.splits(1, 1, seed=0)  # and the stage's loader, if it gets there


def test_gsm8k_check_reads_the_train_split_too(tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps(GOOD) + "\n")
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(TaskError, match=re.escape(f"{tmp_path / 'train.jsonl'}: empty split")):
        GSM8K(source=str(tmp_path)).check()


def test_gsm8k_json_array_file(tmp_path):
    file = tmp_path / "gsm8k.json"
    file.write_text(json.dumps([GOOD, {"question": "q2?", "answer": "#### 1,000"}]))
    task = GSM8K(source=str(file))
    task.check()
    assert [p.answer for p in task.splits(0, 2, seed=0)[1]] == ["2", "1000"]
    file.write_text(json.dumps([GOOD, {"question": "q2?"}]))
    with pytest.raises(TaskError, match=re.escape(f"{file}, record 2: missing field 'answer'")):
        task.check()


def test_gsm8k_shared_data_passes_the_check(gsm8k_dir):
    GSM8K(source=str(gsm8k_dir)).check()


def test_gsm8k_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        GSM8K(source=str(tmp_path / "nope.jsonl")).splits(1, 1, 0)
    with pytest.raises(TaskError, match="no test.jsonl"):
        GSM8K(source=str(tmp_path)).splits(1, 1, 0)
