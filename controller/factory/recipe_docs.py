"""docs/recipes.md, generated from the recipe's pydantic models so it cannot drift from them.

Every key of every section: its type, its default and what it does. What it does comes from the field's
``description``, else from the ``#`` comment lines right above the field (or at the end of its line) in the
model's source, else from :data:`NOTES` below. Sections passed to a stage (``teacher.train``, ``student``,
``finetune``, ``teacher.endpoint``) are documented from that stage's config model.

    python -m controller.factory.recipe_docs            # rewrite docs/recipes.md
    python -m controller.factory.recipe_docs --check    # exit 1 when docs/recipes.md is stale

tests/unit/controller/factory/test_recipe_docs.py fails when the committed file differs from the generated one.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

_DOCUMENTED: dict[type, str] = {}
DOCS_PATH = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"

# Sections whose YAML is passed as a whole to a stage's config (validated there): section -> stage name.
STAGE_SECTIONS = {"teacher.train": "train-teacher", "student": "train-student", "finetune": "finetune"}

# What a key does where its model has neither a description nor a comment.
NOTES: dict[str, str] = {
    "name": "model name in the registry (each build publishes the next version of it)",
    "description": "free text, shown with the recipe",
    "data": "where the examples come from (section `data`)",
    "teacher": "the model that answers the training prompts (section `teacher`); none: the student learns the data",
    "student": "train-student config (section `student`): `init` (a new model) or `model` (a folder)",
    "finetune": "optional fine-tuning on the task data after distillation (section `finetune`)",
    "profiles": "target device profiles: a name, or a mapping (section `profiles[]`)",
    "evaluation": "how every model is measured (section `evaluation`)",
    "lineage": "extra keys recorded in every published variant's manifest",
    "stages": "extra steps of any registered stage (section `stages[]`)",
    "data.task": "the bundled task generator (e.g. smart-building); instead of files",
    "data.variant": "the bundled task's variant",
    "data.train_size": "with `task`: training examples generated",
    "data.validation_size": "with `task`: validation examples generated",
    "data.test_size": "with `task`: test examples generated",
    "data.seed": "with `task`: generator seed",
    "data.train": "JSONL of training prompts with responses (what the teacher learns and answers)",
    "data.validation": "JSONL with responses: validation loss during training (optional)",
    "data.test": "JSONL with responses: every model is scored against these answers",
    "data.extra_train": "more JSONL prompt files added to the training prompts",
    "teacher.train": "train a teacher in the recipe (section `teacher.train`)",
    "teacher.folder": "a local Hugging Face model folder as the teacher",
    "teacher.endpoint": "an OpenAI-compatible chat endpoint as the teacher (section `teacher.endpoint`)",
    "teacher.temperature": "sampling temperature of the teacher's answers (0: greedy)",
    "teacher.max_new_tokens": "longest teacher answer, in tokens",
    "teacher.batch_size": "prompts a local teacher answers at once",
    "teacher.system_prompt": "system message put before every prompt the teacher answers",
    "teacher.limit": "answer only the first N training prompts",
    "teacher.device": "auto, cpu or cuda (a local teacher)",
    "profiles[].name": "a device profile (see `slmops profiles list`)",
    "profiles[].precision": "override the profile's precision",
    "profiles[].int4_block_size": "int4 quantization block size",
    "profiles[].int4_accuracy_level": "int4 compute accuracy level (onnxruntime-genai builder)",
    "profiles[].olive_workflow": "an Olive workflow that builds this variant instead of the model builder",
    "evaluation.limit": "test rows each model is scored on (0: all)",
    "evaluation.max_new_tokens": "longest answer generated per test prompt",
    "evaluation.threads": "intra-op threads for onnxruntime (0: its default)",
    "evaluation.teacher_precision": "precision the teacher is built at to be measured",
    "evaluation.teacher_execution_provider": "execution provider the teacher is measured on",
    "evaluation.reference": "also measure the fp32 student before quantization",
    "stages[].stage": "the registered stage to run",
    "stages[].id": "step id (default: the stage name)",
    "stages[].after": "the phase it runs after (see controller/factory/plan/phases.py)",
    "stages[].config": "the stage's config",
    "stages[].inputs": "input port -> artifact name (default: the artifact named like the port)",
    "stages[].outputs": "output port -> artifact name it provides",
}


# Keys of the stage sections (and model specs) by bare name, where the stage's model does not say.
BARE_NOTES: dict[str, str] = {
    "data": "set by the planner (the training split, or the teacher's answers)",
    "validation": "set by the planner (data.validation)",
    "test": "set by the planner (data.test, for the quick torch check with `task`)",
    "task": "set by the planner (data.task)",
    "test_limit": "test rows of the quick torch check after training",
    "spec": "architecture and sizes of the teacher (section `teacher.train.spec`)",
    "init": "a new model of this architecture and size (section `student.init`); or `model`",
    "model": "a Hugging Face folder (or an earlier step's output) to start from",
    "teacher": "set by the planner (the teacher, for logit_kd and its tokenizer)",
    "method": "sft: learn the answers; logit_kd: also match the teacher's distributions (finetune: full/lora/qlora)",
    "temperature": "logit_kd: softmax temperature",
    "alpha": "logit_kd: weight of the KL term against the answer loss",
    "vocab_size": "size of the tokenizer learned from the data (a new model only)",
    "single_digit_tokens": "the learned tokenizer splits numbers into digits",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA scaling",
    "lora_dropout": "LoRA dropout",
    "merge": "merge the adapter into the model (false: also keep the adapter and its base)",
    "engine": "torch, or an Olive workflow",
    "arch": "model architecture",
    "hidden_size": "width",
    "num_layers": "transformer layers",
    "num_heads": "attention heads",
    "num_kv_heads": "key/value heads (grouped-query attention; default: num_heads)",
    "intermediate_size": "MLP width (default: 4 x hidden_size)",
    "max_position_embeddings": "longest sequence the model handles",
    "tie_word_embeddings": "share the input and output embedding",
    "rope_theta": "rotary embedding base",
    "api_key_env": "environment variable holding the API key (never stored in the recipe)",
    "concurrency": "requests in flight",
    "timeout_s": "seconds per request",
    "max_retries": "retries of a failed request (backoff doubles)",
    "backoff_s": "first retry delay",
}


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the ``#`` comment above it (or at the end of its line), from the class source."""
    out: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            lines, _ = inspect.getsourcelines(cls)
        except (OSError, TypeError):
            continue
        tree = ast.parse(textwrap.dedent("".join(lines)))
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node in body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                text = _comment_for(lines, node.lineno - 1, node.end_lineno or node.lineno)
                if text:
                    out[node.target.id] = text
    return out


def _comment_for(lines: list[str], first: int, end: int) -> str:
    inline = lines[first].split("  # ", 1)[1].strip() if "  # " in lines[first] else ""
    above: list[str] = []
    i = first - 1
    while i >= 0 and lines[i].strip().startswith("#"):
        above.insert(0, lines[i].strip().lstrip("#").strip())
        i -= 1
    return " ".join(above) or inline


def _type_name(annotation: Any) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = re.sub(r"\b(?:[a-z_][\w]*\.)+(?=[A-Za-z_])", "", text.replace("NoneType", "None"))
    return text.replace("|", "\\|")


def _default(info: Any) -> str:
    if info.default is not PydanticUndefined:
        value = info.default
    elif info.default_factory is not None:
        try:
            value = info.default_factory()
        except TypeError:
            return "(computed)"
    else:
        return "**required**"
    if isinstance(value, BaseModel):
        return "(section defaults)"
    return f"`{value!r}`" if value not in ("", None) else ("`''`" if value == "" else "`null`")


def _sub_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (itself, in a list, or optional), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _sub_model(arg)
        if found is not None:
            return found
    return None


def _section(title: str, model: type[BaseModel], prefix: str, out: list[str], queue: list[Any]) -> None:
    doc = inspect.getdoc(model) or ""
    out += [f"## `{title}`", ""]
    if model in _DOCUMENTED:
        out += [f"The same keys as `{_DOCUMENTED[model]}`.", ""]
        return
    _DOCUMENTED[model] = title
    if doc and model.__module__.startswith("controller.factory") and model.__doc__:
        out += [" ".join(doc.split()), ""]
    out += ["| key | type | default | what it does |", "|---|---|---|---|"]
    comments = _field_comments(model)
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        what = info.description or NOTES.get(key) or comments.get(name) or BARE_NOTES.get(name, "")
        sub = _sub_model(info.annotation)
        if sub is not None and key not in STAGE_SECTIONS:
            child = f"{key}[]" if typing.get_origin(info.annotation) is list else key
            queue.append((child, sub))
        elif key in STAGE_SECTIONS or key == "teacher.endpoint":
            queue.append((key, _stage_model(key)))
        what = what.replace("|", "\\|").replace("\n", " ")
        out.append(f"| `{name}` | {_type_name(info.annotation)} | {_default(info)} | {what} |")
    out.append("")


def _stage_model(key: str) -> type[BaseModel]:
    from controller.factory.stage import get_stage

    if key == "teacher.endpoint":
        from controller.factory.stages.distill_data import EndpointConfig

        return EndpointConfig
    return get_stage(STAGE_SECTIONS[key]).config_cls


def generate() -> str:
    from controller.factory.recipe import Recipe

    out = [
        "# Recipe reference",
        "",
        "<!-- Generated by `python -m controller.factory.recipe_docs` from the pydantic models; do not edit. -->",
        "",
        "A recipe is a YAML file (`slmops build RECIPE`); examples are in `examples/recipes/` (`own-data.yaml`:",
        "your own JSONL task). Relative paths are relative to the recipe's folder. Unknown keys are errors.",
        "Sections passed to a stage (`teacher.train`, `student`, `finetune`) also accept that stage's keys set",
        "by the planner (`data`, `validation`, `test`, `task`); leave those to it.",
        "",
    ]
    _DOCUMENTED.clear()
    queue: list[Any] = [("recipe (top level)", Recipe)]
    seen: set[str] = set()
    while queue:
        title, model = queue.pop(0)
        if title in seen:
            continue
        seen.add(title)
        prefix = "" if title == "recipe (top level)" else f"{title}."
        _section(title, model, prefix, out, queue)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = generate()
    if "--check" in argv:
        if DOCS_PATH.exists() and DOCS_PATH.read_text() == text:
            return 0
        print(f"{DOCS_PATH} is stale: run `python -m controller.factory.recipe_docs`", file=sys.stderr)
        return 1
    DOCS_PATH.write_text(text)
    print(f"wrote {DOCS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
