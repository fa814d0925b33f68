"""Readers for the benchmarks' annotation files as their authors distribute them, into Questions with
the prompt the papers' evaluation scripts send (LLaVA-1.5 / lmms-eval: the question, a newline, then
"Answer the question using a single word or phrase.").

| benchmark | file | images (default folder) |
|---|---|---|
| TextVQA | TextVQA_0.5.1_val.json (`data`: question_id, image_id, question, 10 answers) | train_images/<image_id>.jpg |
| DocVQA | val_v1.0.json (`data`: questionId, question, image, answers, question_types) | next to the file |
| InfoVQA | infographicsVQA_val_v1.0_withQT.json (`data`: questionId, question, image_local_name, answers, answer_type, evidence, operation/reasoning) | infographicsvqa_images/ |
| ChartQA | test_human.json / test_augmented.json (list of imgname, query, label), or the folder of both | png/ |
| POPE | coco_pope_{random,popular,adversarial}.json (a JSON object per line: question_id, image, text, label), or their folder | val2014/ |
| MME | eval_tool/Your_Results/<subtask>.txt (image, question, answer, tab-separated), or that folder | --images MME_Benchmark_release_version |
"""

from __future__ import annotations

from pathlib import Path

from ..templates import IMAGE_PLACEHOLDER
from .questions import (
    DEFAULT_CATEGORY,
    BenchmarkDataError,
    Question,
    as_answers,
    check_unique,
    read_json,
    read_json_lines,
    require,
)

SHORT_ANSWER = "Answer the question using a single word or phrase."
MME_YES_NO = " Please answer yes or no."


def short_answer_prompt(question: str) -> str:
    return f"{question.strip()}\n{SHORT_ANSWER}"


def annotation_records(path: Path, key: str | None = "data") -> list[dict]:
    document = read_json(path)
    records = document.get(key) if key and isinstance(document, dict) else document
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        wanted = f"an object with a {key!r} list" if key else "a list of objects"
        raise BenchmarkDataError(f"{path}: expected {wanted}; is it the benchmark's annotation file?")
    return records


def files_in(path: Path, pattern: str, what: str) -> list[Path]:
    """`path` itself, or the files matching `pattern` in the folder `path`."""
    if path.is_dir():
        files = sorted(path.glob(pattern))
        if not files:
            raise BenchmarkDataError(f"{path}: no {pattern} files; point --data at the {what} files")
        return files
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: no such file or folder; check --data")
    return [path]


def read_textvqa(path: Path, images: Path | None = None) -> list[Question]:
    root = images if images is not None else path.parent / "train_images"
    questions = []
    for i, r in enumerate(annotation_records(path)):
        where = f"{path}: data[{i}]"
        questions.append(Question(
            question_id=str(require(r, "question_id", where)),
            text=short_answer_prompt(str(require(r, "question", where))),
            answers=as_answers(require(r, "answers", where), where),
            images=(str(root / f"{require(r, 'image_id', where)}.jpg"),),
        ))
    return check_unique(questions, path)


def read_docvqa(path: Path, images: Path | None = None) -> list[Question]:
    root = images if images is not None else path.parent
    questions = []
    for i, r in enumerate(annotation_records(path)):
        where = f"{path}: data[{i}]"
        if "answers" not in r:
            raise BenchmarkDataError(f"{where}: no 'answers'; the DocVQA test split has none, use the val split")
        questions.append(Question(
            question_id=str(require(r, "questionId", where)),
            text=short_answer_prompt(str(require(r, "question", where))),
            answers=as_answers(r["answers"], where),
            images=(str(root / str(require(r, "image", where))),),
            categories=tuple(r.get("question_types") or (DEFAULT_CATEGORY,)),
        ))
    return check_unique(questions, path)


def read_infovqa(path: Path, images: Path | None = None) -> list[Question]:
    """InfographicVQA val; the categories are the answer types, evidence kinds and operations the
    withQT file lists for each question."""
    root = images if images is not None else path.parent / "infographicsvqa_images"
    questions = []
    for i, r in enumerate(annotation_records(path)):
        where = f"{path}: data[{i}]"
        if "answers" not in r:
            raise BenchmarkDataError(f"{where}: no 'answers'; the InfoVQA test split has none, use the val split")
        categories = tuple(f"{kind}/{value}" for kind, key in (("answer", "answer_type"), ("evidence", "evidence"),
                                                               ("operation", "operation/reasoning"))
                           for value in r.get(key) or ())
        questions.append(Question(
            question_id=str(require(r, "questionId", where)),
            text=short_answer_prompt(str(require(r, "question", where))),
            answers=as_answers(r["answers"], where),
            images=(str(root / str(require(r, "image_local_name", where))),),
            categories=categories or (DEFAULT_CATEGORY,),
        ))
    return check_unique(questions, path)


def read_chartqa(path: Path, images: Path | None = None) -> list[Question]:
    """test_human.json and/or test_augmented.json; the category is the file's split (human, augmented)."""
    questions = []
    for file in files_in(path, "test_*.json", "ChartQA test_human.json / test_augmented.json"):
        root = images if images is not None else file.parent / "png"
        split = file.stem.removeprefix("test_")
        for i, r in enumerate(annotation_records(file, key=None)):
            where = f"{file}: [{i}]"
            questions.append(Question(
                question_id=f"{split}/{i}",
                text=short_answer_prompt(str(require(r, "query", where))),
                answers=as_answers(require(r, "label", where), where),
                images=(str(root / str(require(r, "imgname", where))),),
                categories=(split,),
            ))
    return check_unique(questions, path)


def read_pope(path: Path, images: Path | None = None) -> list[Question]:
    """coco_pope_<split>.json files (a JSON object per line); the category is the split."""
    questions = []
    for file in files_in(path, "coco_pope_*.json", "POPE coco_pope_*.json"):
        root = images if images is not None else file.parent / "val2014"
        split = file.stem.removeprefix("coco_pope_")
        for number, r in enumerate(read_json_lines(file), 1):
            where = f"{file}:{number}"
            questions.append(Question(
                question_id=f"{split}/{require(r, 'question_id', where)}",
                text=short_answer_prompt(str(require(r, "text", where))),
                answers=as_answers(require(r, "label", where), where),
                images=(str(root / str(require(r, "image", where))),),
                categories=(split,),
            ))
    return check_unique(questions, path)


def mme_image_path(root: Path, subtask: str, name: str) -> str:
    """Five subtasks keep their pictures in <subtask>/images/, the others next to the questions."""
    nested = root / subtask / "images" / name
    return str(nested if nested.is_file() else root / subtask / name)


def read_mme(path: Path, images: Path | None = None) -> list[Question]:
    """<subtask>.txt files of MME's eval tool: image, question, answer (Yes/No) per line, tab-separated."""
    root = images if images is not None else path.parent if path.is_file() else path
    questions = []
    for file in files_in(path, "*.txt", "MME eval_tool/Your_Results/<subtask>.txt"):
        subtask = file.stem
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 3:
                raise BenchmarkDataError(f"{file}:{number}: expected image<TAB>question<TAB>answer, got {line!r}")
            name, question, answer = (f.strip() for f in fields[:3])
            questions.append(Question(
                question_id=f"{subtask}/{number}",
                # lmms-eval's LLaVA prompt: the short-answer instruction instead of "Please answer yes or no."
                text=short_answer_prompt(question.replace(MME_YES_NO, "")),
                answers=(answer,),
                images=(mme_image_path(root, subtask, name),),
                categories=(subtask,),
            ))
    return check_unique(questions, path)


def read_llava_conversations(path: Path, images: Path | None = None) -> list[Question]:
    """LLaVA-format training JSON (a list of id, image, conversations, optional category): each
    record's first human turn is the question (its <image> placeholder removed) and the next gpt
    turn the answer."""
    root = images if images is not None else path.parent
    questions = []
    for i, r in enumerate(annotation_records(path, key=None)):
        where = f"{path}: [{i}]"
        turns = require(r, "conversations", where)
        if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) for t in turns[:2]):
            raise BenchmarkDataError(f"{where}: 'conversations' must start with a human turn and a gpt turn")
        human, gpt = turns[0], turns[1]
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise BenchmarkDataError(f"{where}: 'conversations' must start with a human turn and a gpt turn")
        image = r.get("image")
        questions.append(Question(
            question_id=str(require(r, "id", where)),
            text=str(require(human, "value", where)).replace(IMAGE_PLACEHOLDER, "").strip(),
            answers=as_answers(require(gpt, "value", where), where),
            images=(str(root / image),) if image else (),
            categories=(str(r.get("category") or DEFAULT_CATEGORY),),
        ))
    return check_unique(questions, path)

