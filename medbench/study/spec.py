"""A study file (``STUDY.yaml``) and the grid of cells it expands to.

A study is backbones × recipes × seeds, plus each backbone's base model and an SFT comparator. Every cell is
one command (build preference data, train, evaluate, build the board) with an output folder and a config hash:
the hash covers the command, its environment, the content of its input files and the hashes of the cells it
depends on, so a changed setting invalidates exactly the cells it reaches.

Keys of a study file (relative paths are relative to the working directory, as on any command line;
``${VAR}`` is read from the environment)::

    study: NAME                     # the folder under --out (default: the file's stem)
    prepare:                        # medbench commands run first, once (data generators, model builders);
      NAME: [synth, vqa, --out, "{prepare:NAME}"]   # "{prepare:NAME}" anywhere in the file is NAME's folder
    env: {OMP_NUM_THREADS: "1"}     # environment of every cell
    backbones:                      # name -> the checkpoint to start from and its medbench train profile
      NAME: {model: PATH_OR_HUB_ID, profile: llava_med_v1_5, eval_model_args: "key=value,..."}
    recipes: [dpo, copo, ...]       # medbench train recipes trained for every backbone and seed
    seeds: [42]
    sft: true                       # train the `sft` comparator (once per backbone and seed)
    base: true                      # evaluate each base checkpoint too
    variants_from: base             # or `sft`: start each variant from the SFT checkpoint of its seed
    data:
      preferences: FILE             # given preference data (medbench train's schema), or
      build: [INPUT, ARGS...]       # `medbench prefs build INPUT ARGS --recipe R` (once per recipe)
      sft: FILE                     # supervised data for `sft` (default: the preference file)
      image_root: DIR               # where the given files' relative image paths resolve
    probe:                          # held-out preference pairs every model is scored on (`medbench prefs score`)
      preferences: FILE             # given pairs, or
      build: [INPUT, ARGS...]       # `medbench prefs build INPUT ARGS` (ARGS name the --recipe, e.g. mdpo)
      args: [--batch_size, "64"]    # further `prefs score` flags
    train: {key: value}             # `medbench train --key value` for every training cell
    recipe_train: {RECIPE: {key: value}}
    launcher: [accelerate, launch, --config_file, FILE]   # optional: how training cells start
    eval:
      model: medbench_hf
      tasks: [medbench_vqa_rad]
      args: [--batch_size, "8"]     # further lmms-eval flags
      env: {MEDBENCH_DATA: demo}    # environment of evaluation cells (judge variables go here too)
      references:                   # models evaluated once, beside the grid (e.g. the non-neural floor)
        NAME: {model: medbench_baseline, model_args: "key=value,..."}
    board: {baseline: sft}          # `base`, `sft` or a recipe: the run every other one is tested against
    global_batch: 16                # optional: per-device batch x processes x accumulation must equal this
                                    # (gradient_accumulation_steps is derived when train: does not state it)
    resources:                      # per cell kind (prepare, prefs, train, eval, probe, board); what a
      train: {gpus: 8, cpus: 32, mem: 200G, time: "24:00:00"}   # scheduler allocates. A training cell with a
      eval: {gpus: 1, cpus: 8}      # launcher runs one process per GPU, an evaluation with several GPUs one
                                    # lmms-eval process per GPU; `study run --jobs N` on one machine gives each
                                    # running cell its GPUs (CUDA_VISIBLE_DEVICES; with none stated it sees all).
                                    # Only the process counts enter a cell's hash.
    cluster: {partition: gpu, account: lab, qos: normal, sbatch: ["--constraint=a100"]}  # `--executor slurm`

Backbones may state ``revision:`` (a hub revision: part of the hash, and passed to their evaluations). Cell
hashes do not depend on where the study's output folder lives: paths under it are hashed relative to it, so a
moved folder stays done. The file is read into :class:`StudyConfig` (validated dataclasses, one error line
naming the key), then each cell kind is built by its own small function (``_train_cell``, ``_eval_cell``, ...).

Cell kinds: ``prepare``, ``prefs`` (a preference build; ``prefs/heldout`` for the probe), ``train``, ``eval``,
``probe`` (held-out scoring of one model) and ``board`` (the leaderboard and, with a probe, the study's analysis:
:mod:`medbench.study.analysis`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from medbench.errors import MedbenchError

SFT = "sft"
BASE = "base"
REFERENCE = "reference"
HELDOUT = "prefs/heldout"
CELL_KINDS = ("prepare", "prefs", "train", "eval", "probe", "board")
_KNOWN_KEYS = {
    "study", "description", "prepare", "env", "backbones", "recipes", "seeds", "sft", "base", "variants_from",
    "data", "probe", "train", "recipe_train", "launcher", "eval", "board", "global_batch", "resources", "cluster",
}
# The installed distributions whose version each cell kind's outputs depend on (part of the cell's hash).
VERSIONED = {
    "prepare": ("medbench", "torch", "transformers"),
    "prefs": ("medbench",),
    "train": ("medbench", "torch", "transformers", "trl"),
    "eval": ("medbench", "torch", "transformers", "lmms-eval"),
    "probe": ("medbench", "torch", "transformers"),
    "board": ("medbench",),
}
_PREPARE = re.compile(r"\{prepare:([A-Za-z0-9_.-]+)\}")


@dataclass(frozen=True)
class Resources:
    """What one cell asks of a scheduler (``resources.KIND`` in a study file).

    Attributes:
        gpus: GPUs per node; a training cell with a launcher runs one process per GPU.
        cpus: CPU cores for the cell (SLURM ``--cpus-per-task``).
        mem: Memory per node in SLURM's notation (``64G``, ``500M``); None leaves the cluster's default.
        time: Wall-time limit (``HH:MM:SS``, ``D-HH:MM:SS`` or minutes); None leaves the partition's default.
        nodes: Nodes per cell; one today (multi-node launchers need a rendezvous medbench does not set up).
    """

    gpus: int = 0
    cpus: int = 1
    mem: str | None = None
    time: str | None = None
    nodes: int = 1

    @classmethod
    def parse(cls, raw: Any, where: str) -> Resources:
        """Validate a ``{gpus, cpus, mem, time, nodes}`` mapping; errors name ``where`` and the field."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise MedbenchError(f"{where}: expected a mapping such as {{gpus: 1, cpus: 8, mem: 64G, time: '4:00:00'}}")
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise MedbenchError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for key in ("gpus", "cpus", "nodes"):
            if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 0):
                raise MedbenchError(f"{where}.{key}: {raw[key]!r}; give a whole number >= 0")
        if raw.get("cpus", 1) < 1 or raw.get("nodes", 1) < 1:
            raise MedbenchError(f"{where}: cpus and nodes must be at least 1")
        if raw.get("nodes", 1) != 1:
            raise MedbenchError(f"{where}.nodes: {raw['nodes']}; a cell runs on one node (give it more GPUs instead)")
        if "mem" in raw and not re.fullmatch(r"\d+[KMGT]?", str(raw["mem"])):
            raise MedbenchError(f"{where}.mem: {raw['mem']!r}; give SLURM's notation, e.g. 64G or 500M")
        if "time" in raw and not re.fullmatch(r"(\d+-)?\d+(:\d\d){0,2}", str(raw["time"])):
            raise MedbenchError(f"{where}.time: {raw['time']!r}; give minutes or [D-]HH:MM:SS, e.g. '24:00:00'")
        return cls(**{key: (str(value) if key in ("mem", "time") else value) for key, value in raw.items()})


@dataclass(frozen=True)
class Cluster:
    """Where ``--executor slurm`` submits (``cluster:`` in a study file; command-line flags win).

    Attributes:
        partition: SLURM partition (``--partition``); None: the cluster's default.
        account: SLURM account (``--account``).
        qos: Quality of service (``--qos``).
        sbatch: Further ``#SBATCH`` options, each as on the command line (``--constraint=a100``).
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Any, where: str) -> Cluster:
        """Validate a ``cluster:`` mapping."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise MedbenchError(f"{where}: expected a mapping of partition:, account:, qos:, sbatch: [...]")
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise MedbenchError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        extra = raw.get("sbatch") or []
        if not isinstance(extra, list) or not all(isinstance(line, str) and line.startswith("--") for line in extra):
            raise MedbenchError(f"{where}.sbatch: give a list of sbatch options such as [\"--constraint=a100\"]")
        return cls(partition=raw.get("partition"), account=raw.get("account"), qos=raw.get("qos"),
                   sbatch=tuple(extra))


@dataclass
class Cell:
    """One unit of work of a study.

    Attributes:
        id: ``backbone/variant/sSEED/kind`` (``prefs/RECIPE``, ``board``), also its folder under the study.
        kind: ``prefs``, ``train``, ``eval`` or ``board``.
        argv: The ``medbench`` arguments (``["train", "--config", ...]``), without the program.
        launcher: Words placed before ``-m medbench`` for training cells (``accelerate launch ...``).
        env: Extra environment variables.
        deps: Ids of the cells whose outputs this one reads.
        inputs: Files whose content is part of the hash.
        meta: What the board and the report need (backbone, variant, seed).
        identity: Further facts the outputs depend on that the command does not show (installed versions, the
            recipe file's content, the backbone checkpoint's identity); part of the hash.
        resources: What a scheduler allocates for the cell (not part of the hash).
        hash: The config hash, set by :func:`load_study`.
    """

    id: str
    kind: str
    argv: list[str]
    launcher: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    deps: list[str] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    hash: str = ""


@dataclass
class Study:
    """A parsed study file with its cells in dependency order."""

    name: str
    path: Path
    root: Path
    cells: list[Cell]
    baseline: str | None
    probe: bool = False
    cluster: Cluster = field(default_factory=Cluster)

    def cell(self, cell_id: str) -> Cell:
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        raise MedbenchError(f"{self.path}: no cell {cell_id!r} (see `medbench study plan {self.path}`)")

    def folder(self, cell: Cell) -> Path:
        return self.root / cell.id


def _expand_vars(value: Any, where: str) -> Any:
    if isinstance(value, str):
        def substitute(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise MedbenchError(f"{where}: ${{{name}}} is not set; export {name}=... before using this study")
            return os.environ[name]

        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", substitute, value)
    if isinstance(value, list):
        return [_expand_vars(item, where) for item in value]
    if isinstance(value, dict):
        return {key: _expand_vars(item, where) for key, item in value.items()}
    return value


def _flags(mapping: dict[str, Any], where: str) -> list[str]:
    """``{"beta": 0.1, "use_lora": true, "rewards": [a, b], "max_length": null}`` ->
    ``["--beta", "0.1", "--use_lora", "true", "--rewards", "a,b", "--max_length", "null"]``.

    A list of plain values becomes the comma-separated form ``medbench train`` reads for list settings; ``null``
    un-states a setting (e.g. a study-wide DPO setting a GRPO recipe does not have).
    """
    if not isinstance(mapping, dict):
        raise MedbenchError(f"{where}: expected a mapping of option: value")

    def word(value: Any) -> str:
        if value is None:
            return "null"
        return str(value).lower() if isinstance(value, bool) else str(value)

    argv = []
    for key, value in mapping.items():
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
            raise MedbenchError(f"{where}.{key}: give a single value or a list of plain values")
        argv += [f"--{key}", ",".join(word(v) for v in value) if isinstance(value, list) else word(value)]
    return argv


def _is_true(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _words(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MedbenchError(f"{where}: give a list, e.g. [--batch_size, \"8\"]")
    return tuple(str(word) for word in value)


def _mapping(value: Any, where: str, example: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MedbenchError(f"{where}: expected a mapping, e.g. {example}")
    return value


@dataclass(frozen=True)
class Backbone:
    """``backbones.NAME``: the checkpoint a backbone's cells start from.

    Attributes:
        name: The backbone's name in cell ids and on the board.
        model: A local checkpoint folder or a hub id.
        profile: The ``medbench train --backbone`` profile (freezing, chat template).
        eval_model_args: Further lmms-eval ``--model_args`` for its evaluations.
        revision: The hub revision (part of the hash; passed to the evaluations as ``revision=``).
    """

    name: str
    model: str
    profile: str | None = None
    eval_model_args: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, name: str, raw: Any, where: str) -> Backbone:
        """Validate one ``backbones:`` entry."""
        if not isinstance(raw, dict) or not raw.get("model"):
            raise MedbenchError(f"{where}: give model: PATH_OR_HUB_ID")
        known = {item.name for item in fields(cls)} - {"name"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise MedbenchError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(name=str(name), **{key: str(value) for key, value in raw.items()})


@dataclass(frozen=True)
class Pairs:
    """Preference pairs given as a file, or built by ``medbench prefs build`` (``data:`` and ``probe:``).

    Attributes:
        preferences: A given file (medbench train's schema).
        build: ``medbench prefs build`` arguments (input first).
        sft: Supervised data for ``sft`` (``data:`` only; default: the preference file).
        image_root: Where a given file's relative image paths resolve (``data:`` only).
        args: Further ``medbench prefs score`` flags (``probe:`` only).
    """

    preferences: str | None = None
    build: tuple[str, ...] = ()
    sft: str | None = None
    image_root: str | None = None
    args: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Any, where: str, keys: tuple[str, ...]) -> Pairs:
        """Validate ``data:`` (keys preferences, build, sft, image_root) or ``probe:`` (preferences, build, args)."""
        if not isinstance(raw, dict):
            raise MedbenchError(f"{where}: expected {', '.join(key + ':' for key in keys)}")
        unknown = sorted(set(raw) - set(keys))
        if unknown:
            raise MedbenchError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(keys)}")
        if bool(raw.get("preferences")) == bool(raw.get("build")):
            raise MedbenchError(f"{where}: give exactly one of preferences: FILE or build: [medbench prefs build args]")
        return cls(preferences=str(raw["preferences"]) if raw.get("preferences") else None,
                   build=_words(raw.get("build"), f"{where}.build"),
                   sft=str(raw["sft"]) if raw.get("sft") else None,
                   image_root=str(raw["image_root"]) if raw.get("image_root") else None,
                   args=_words(raw.get("args"), f"{where}.args"))

    @property
    def image_flags(self) -> list[str]:
        """``--image_root DIR`` for commands that read the given file."""
        return ["--image_root", self.image_root] if self.image_root else []


@dataclass(frozen=True)
class Evaluation:
    """``eval:``: how every checkpoint (and each reference model) is evaluated.

    Attributes:
        tasks: medbench task names.
        model: The lmms-eval model of the grid's checkpoints.
        args: Further lmms-eval flags.
        env: Environment of evaluation cells (data locations, judge variables).
        references: Models evaluated once beside the grid: name -> (lmms-eval model, model_args or None).
    """

    tasks: tuple[str, ...]
    model: str = "medbench_hf"
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    references: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any, where: str) -> Evaluation:
        """Validate ``eval:``."""
        raw = _mapping(raw, where, "{tasks: [medbench_vqa_rad]}")
        if not raw.get("tasks"):
            raise MedbenchError(f"{where}.tasks: name the medbench tasks to evaluate, e.g. [medbench_vqa_rad]")
        references = _mapping(raw.get("references"), f"{where}.references",
                              "{NAME: {model: LMMS_EVAL_MODEL, model_args: ...}}")
        for reference, spec in references.items():
            if not isinstance(spec, dict) or not spec.get("model"):
                raise MedbenchError(f"{where}.references.{reference}: give model: an lmms-eval model name")
        return cls(tasks=_words(raw["tasks"], f"{where}.tasks"), model=str(raw.get("model") or "medbench_hf"),
                   args=_words(raw.get("args"), f"{where}.args"),
                   env={str(k): str(v) for k, v in _mapping(raw.get("env"), f"{where}.env", "{KEY: value}").items()},
                   references={str(name): (str(spec["model"]), str(spec["model_args"]) if spec.get("model_args")
                                           else None) for name, spec in references.items()})


@dataclass(frozen=True)
class StudyConfig:
    """A study file, validated (see the module docstring for its keys); :func:`load_study` expands it to cells.

    ``{prepare:NAME}`` placeholders and ``${VAR}`` are already substituted; paths under ``root`` are where
    cells write.
    """

    path: Path
    name: str
    out: Path
    root: Path
    prepare: dict[str, tuple[str, ...]]
    prepare_reads: dict[str, tuple[str, ...]]
    env: dict[str, str]
    backbones: tuple[Backbone, ...]
    recipes: tuple[str, ...]
    seeds: tuple[int, ...]
    sft: bool
    base: bool
    variants_from: str
    data: Pairs
    probe: Pairs | None
    train: dict[str, Any]
    recipe_train: dict[str, dict[str, Any]]
    launcher: tuple[str, ...]
    evaluation: Evaluation
    baseline: str | None
    global_batch: int | None
    resources: dict[str, Resources]
    cluster: Cluster

    @classmethod
    def read(cls, path: Path, out: Path | None) -> StudyConfig:
        """Read and validate a study file.

        Raises:
            MedbenchError: The file is missing or malformed; the message names the key and the fix.
        """
        path = Path(path)
        if not path.is_file():
            raise MedbenchError(f"{path}: no such study file (examples: medbench/studies/paper.yaml, "
                                "medbench/studies/tiny.yaml)")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise MedbenchError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from error
        if not isinstance(raw, dict):
            raise MedbenchError(f"{path}: a study file is a mapping (study:, backbones:, recipes:, ...)")
        unknown = sorted(set(raw) - _KNOWN_KEYS)
        if unknown:
            raise MedbenchError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN_KEYS))}")
        raw = _expand_vars(raw, str(path))
        name = str(raw.get("study") or path.stem)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise MedbenchError(f"{path}: study {name!r}: use letters, digits, '.', '_' or '-'")
        out = Path(out) if out else Path("studies-out")
        root = out / name
        prepare = raw.get("prepare") or {}
        if not isinstance(prepare, dict) or not all(isinstance(argv, list) and argv for argv in prepare.values()):
            raise MedbenchError(f"{path}: prepare: map each name to a medbench command, e.g. data: [synth, vqa, "
                                "--out, \"{prepare:data}\"]")
        names = {str(key) for key in prepare}
        # An entry runs after the entries whose folders ({prepare:NAME}) its command names.
        reads = {str(key): tuple(dict.fromkeys(other for other in _PREPARE.findall(" ".join(map(str, argv)))
                                               if other != key)) for key, argv in prepare.items()}
        prepare = _substitute_prepare(prepare, root, names, f"{path}: prepare")
        raw = _substitute_prepare({k: v for k, v in raw.items() if k != "prepare"}, root, names, str(path))

        backbones = raw.get("backbones")
        if not isinstance(backbones, dict) or not backbones:
            raise MedbenchError(f"{path}: backbones: name at least one, e.g. backbones: {{tiny: {{model: DIR}}}}")
        recipes = tuple(str(recipe) for recipe in raw.get("recipes") or [])
        if SFT in recipes:
            raise MedbenchError(f"{path}: recipes: leave out sft; it is trained by `sft: true`")
        seeds = raw.get("seeds") or [42]
        if not isinstance(seeds, list) or not all(isinstance(seed, int) for seed in seeds):
            raise MedbenchError(f"{path}: seeds: give whole numbers, e.g. seeds: [1, 2]")
        sft, base = _is_true(raw.get("sft", True)), _is_true(raw.get("base", True))
        variants_from = str(raw.get("variants_from", BASE))
        if variants_from not in (BASE, SFT):
            raise MedbenchError(f"{path}: variants_from: {variants_from!r}; choose base or sft")
        if variants_from == SFT and not sft:
            raise MedbenchError(f"{path}: variants_from: sft needs sft: true")
        train = _mapping(raw.get("train"), f"{path}: train", "{learning_rate: 1.0e-7}")
        _flags(train, f"{path}: train")
        recipe_train = _mapping(raw.get("recipe_train"), f"{path}: recipe_train", "{dpo_nll: {nll_weight: 1.0}}")
        for recipe, overrides in recipe_train.items():
            _flags(overrides, f"{path}: recipe_train.{recipe}")
        resources_raw = raw.get("resources") or {}
        if not isinstance(resources_raw, dict) or set(resources_raw) - set(CELL_KINDS):
            raise MedbenchError(f"{path}: resources: map cell kinds ({', '.join(CELL_KINDS)}) to {{gpus:, cpus:, "
                                "mem:, time:}")
        resources = {kind: Resources.parse(resources_raw.get(kind), f"{path}: resources.{kind}")
                     for kind in CELL_KINDS}
        global_batch = raw.get("global_batch")
        if global_batch is not None and (not isinstance(global_batch, int) or global_batch < 1):
            raise MedbenchError(f"{path}: global_batch: {global_batch!r}; give a whole number such as 16")
        board = _mapping(raw.get("board"), f"{path}: board", "{baseline: sft}")
        baseline = board.get("baseline")
        if baseline is not None and baseline not in {BASE, SFT, *recipes}:
            raise MedbenchError(f"{path}: board.baseline: {baseline!r}; choose base, sft or one of the recipes")
        probe = raw.get("probe")
        probe_pairs = Pairs.parse(probe, f"{path}: probe", ("preferences", "build", "args")) if probe else None
        if probe_pairs and probe_pairs.build and "--recipe" not in probe_pairs.build:
            raise MedbenchError(f"{path}: probe.build: name the pairs' recipe, e.g. [..., --recipe, mdpo]")
        return cls(
            path=path, name=name, out=out, root=root,
            prepare={str(key): tuple(str(word) for word in argv) for key, argv in prepare.items()}, prepare_reads=reads,
            env={str(k): str(v) for k, v in _mapping(raw.get("env"), f"{path}: env", "{KEY: value}").items()},
            backbones=tuple(Backbone.parse(key, spec, f"{path}: backbones.{key}") for key, spec in backbones.items()),
            recipes=recipes, seeds=tuple(seeds), sft=sft, base=base, variants_from=variants_from,
            data=Pairs.parse(raw.get("data") or {}, f"{path}: data", ("preferences", "build", "sft", "image_root")),
            probe=probe_pairs, train=train, recipe_train=recipe_train,
            launcher=tuple(_launcher([str(word) for word in raw.get("launcher") or []], resources["train"],
                                     f"{path}: launcher")),
            evaluation=Evaluation.parse(raw.get("eval"), f"{path}: eval"), baseline=baseline,
            global_batch=global_batch, resources=resources, cluster=Cluster.parse(raw.get("cluster"), f"{path}: cluster"),
        )

    def folder(self, cell_id: str) -> str:
        """Where cell ``cell_id`` writes."""
        return str(self.root / cell_id)

    def preference_file(self, recipe: str) -> tuple[str, list[str], list[Path]]:
        """The pairs a recipe trains on: (file, the cells that build it, given files to hash)."""
        if recipe == SFT and self.data.sft:
            return self.data.sft, [], [Path(self.data.sft)]
        if self.data.preferences:
            return self.data.preferences, [], [Path(self.data.preferences)]
        return f"{self.folder(f'prefs/{recipe}')}/prefs.jsonl", [f"prefs/{recipe}"], []

    def heldout_file(self) -> tuple[str, list[str], list[Path]]:
        """The probe's pairs: (file, the cell that builds it, given files to hash)."""
        assert self.probe is not None
        if self.probe.preferences:
            return self.probe.preferences, [], [Path(self.probe.preferences)]
        return f"{self.folder(HELDOUT)}/prefs.jsonl", [HELDOUT], []

    def trained_model(self, train: Cell) -> str:
        """The checkpoint a training cell leaves for evaluation (its merged model when LoRA is used)."""
        lora = _is_true(self.train.get("use_lora", False))
        return f"{self.folder(train.id)}/merged" if lora else self.folder(train.id)


def _model_cell_id(backbone: str, variant: str, seed: int | None, kind: str) -> str:
    return f"{backbone}/{variant}/{'s' + str(seed) if seed is not None else 'model'}/{kind}"


def _prepare_cells(config: StudyConfig) -> list[Cell]:
    """One cell per ``prepare:`` entry, after the entries whose folders its command names."""
    return [Cell(id=f"prepare/{key}", kind="prepare", argv=list(argv), meta={"prepare": key},
                 deps=[f"prepare/{other}" for other in config.prepare_reads[key]])
            for key, argv in config.prepare.items()]


def _prefs_cells(config: StudyConfig) -> list[Cell]:
    """``medbench prefs build`` once per recipe that trains on built pairs (and once for the probe's pairs)."""
    cells = []
    if config.data.build:
        for recipe in [*config.recipes, *([SFT] if config.sft and not config.data.sft else [])]:
            cells.append(Cell(id=f"prefs/{recipe}", kind="prefs", meta={"recipe": recipe},
                              argv=["prefs", "build", *config.data.build, "--recipe", recipe,
                                    "--output_dir", config.folder(f"prefs/{recipe}")]))
    if config.probe and config.probe.build:
        cells.append(Cell(id=HELDOUT, kind="prefs", meta={"recipe": "heldout"},
                          argv=["prefs", "build", *config.probe.build, "--output_dir", config.folder(HELDOUT)]))
    return cells


def _train_cell(config: StudyConfig, backbone: Backbone, recipe: str, seed: int, start: str,
                start_deps: list[str]) -> Cell:
    """``medbench train`` of one recipe and seed from ``start`` (the backbone, or its seed's SFT model)."""
    file, deps, inputs = config.preference_file(recipe)
    cell_id = f"{backbone.name}/{recipe}/s{seed}/train"
    argv = ["train", "--config", recipe, "--model", start, "--data", file, "--output_dir", config.folder(cell_id)]
    if not deps:  # a given file; built ones keep their images beside them
        argv += config.data.image_flags
    identity = {"recipe": _recipe_identity(recipe)}
    if backbone.profile:
        argv += ["--backbone", backbone.profile]
        identity["profile"] = _profile_identity(backbone.profile)
    # A recipe's own settings replace the study-wide ones (one flag each, so the command reads plainly).
    settings = _global_batch({**config.train, **(config.recipe_train.get(recipe) or {})}, config.global_batch,
                             _processes(list(config.launcher)), f"{config.path}: recipe {recipe}")
    argv += ["--seed", str(seed), *_flags(settings, f"{config.path}: train")]
    return Cell(id=cell_id, kind="train", argv=argv, launcher=list(config.launcher), deps=deps + start_deps,
                inputs=inputs, meta={"backbone": backbone.name, "variant": recipe, "seed": seed}, identity=identity)


def _eval_cell(config: StudyConfig, backbone: Backbone, variant: str, seed: int | None, model: str,
               deps: list[str]) -> Cell:
    """``medbench eval`` of one checkpoint on the study's tasks."""
    cell_id = _model_cell_id(backbone.name, variant, seed, "eval")
    extra = [f"revision={backbone.revision}"] if backbone.revision and model == backbone.model else []
    model_args = ",".join([f"pretrained={model}", *extra, *([backbone.eval_model_args] if backbone.eval_model_args
                                                              else [])])
    # An evaluation given several GPUs runs data-parallel, one lmms-eval process per GPU.
    gpus = config.resources["eval"].gpus
    processes = ["--processes", str(gpus)] if gpus > 1 else []
    argv = ["eval", *processes, "--model", config.evaluation.model, "--model_args", model_args, "--tasks",
            ",".join(config.evaluation.tasks), "--output_path", config.folder(cell_id), *config.evaluation.args]
    return Cell(id=cell_id, kind="eval", argv=argv, env=dict(config.evaluation.env), deps=deps,
                meta={"backbone": backbone.name, "variant": variant, "seed": seed})


def _probe_cell(config: StudyConfig, backbone: Backbone, variant: str, seed: int | None, model: str,
                deps: list[str]) -> Cell:
    """``medbench prefs score`` of one checkpoint on the held-out pairs."""
    assert config.probe is not None
    file, probe_deps, inputs = config.heldout_file()
    cell_id = _model_cell_id(backbone.name, variant, seed, "probe")
    argv = ["prefs", "score", model, file, "--output_dir", config.folder(cell_id), "--no_progress", *config.probe.args]
    if not probe_deps:
        argv += config.data.image_flags
    return Cell(id=cell_id, kind="probe", argv=argv, deps=deps + probe_deps, inputs=inputs,
                meta={"backbone": backbone.name, "variant": variant, "seed": seed})


def _model_cells(config: StudyConfig, backbone: Backbone, variant: str, seed: int | None, model: str,
                 deps: list[str]) -> list[Cell]:
    """The cells that score one checkpoint: its evaluation and, with a probe, its held-out scoring."""
    cells = [_eval_cell(config, backbone, variant, seed, model, deps)]
    if config.probe:
        cells.append(_probe_cell(config, backbone, variant, seed, model, deps))
    return cells


def _backbone_cells(config: StudyConfig, backbone: Backbone) -> list[Cell]:
    """A backbone's grid: its base model, then per seed SFT and every recipe, each trained and scored."""
    cells = _model_cells(config, backbone, BASE, None, backbone.model, []) if config.base else []
    for seed in config.seeds:
        sft_train = None
        if config.sft:
            sft_train = _train_cell(config, backbone, SFT, seed, backbone.model, [])
            cells += [sft_train, *_model_cells(config, backbone, SFT, seed, config.trained_model(sft_train),
                                               [sft_train.id])]
        for recipe in config.recipes:
            from_sft = config.variants_from == SFT and sft_train is not None
            start, deps = (config.trained_model(sft_train), [sft_train.id]) if from_sft else (backbone.model, [])
            train = _train_cell(config, backbone, recipe, seed, start, deps)
            cells += [train, *_model_cells(config, backbone, recipe, seed, config.trained_model(train), [train.id])]
    # Cells that read the backbone checkpoint itself (the others reach it through their dependencies' hashes).
    checkpoint = _checkpoint_identity(backbone.model, backbone.revision, config.root)
    for cell in cells:
        if backbone.model in cell.argv or f"pretrained={backbone.model}" in " ".join(cell.argv):
            cell.identity["checkpoint"] = checkpoint
    return cells


def _reference_cells(config: StudyConfig) -> list[Cell]:
    """One evaluation per reference model (``eval.references``), beside the grid."""
    cells = []
    for reference, (model, model_args) in config.evaluation.references.items():
        cell_id = f"{REFERENCE}/{reference}/eval"
        argv = ["eval", "--model", model, "--tasks", ",".join(config.evaluation.tasks),
                "--output_path", config.folder(cell_id), *(["--model_args", model_args] if model_args else [])]
        cells.append(Cell(id=cell_id, kind="eval", argv=argv, env=dict(config.evaluation.env),
                          meta={"backbone": REFERENCE, "variant": reference, "seed": None}))
    return cells


def _board_cell(config: StudyConfig, cells: list[Cell]) -> Cell:
    """The leaderboard (and analysis) of every evaluation and probe cell."""
    # The board verifies every run against the test data, so it reads the data the evaluation cells read.
    return Cell(id="board", kind="board", argv=["study", "board", str(config.path), "--out", str(config.out)],
                env=dict(config.evaluation.env), deps=[cell.id for cell in cells if cell.kind in ("eval", "probe")])


def load_study(path: Path, out: Path | None = None) -> Study:
    """Read ``path`` and expand it into cells (nothing is run).

    Args:
        path: The study YAML.
        out: Folder holding every study's outputs (default ``studies-out``); the study's own folder is
            ``out/NAME``.

    Raises:
        MedbenchError: The file is missing or malformed; the message names the key and the fix.
    """
    config = StudyConfig.read(path, out)
    prepared = _prepare_cells(config)
    cells = [*prepared, *_prefs_cells(config)]
    for backbone in config.backbones:
        cells += _backbone_cells(config, backbone)
    cells += _reference_cells(config)
    cells.append(_board_cell(config, cells))
    versions = installed_versions()
    for cell in cells:
        if cell.kind != "prepare":
            cell.deps = [*(c.id for c in prepared), *cell.deps]
        cell.env = {**config.env, **cell.env}
        cell.resources = config.resources[cell.kind]
        cell.identity = {**cell.identity, **{f"version:{name}": versions[name] for name in VERSIONED[cell.kind]}}
    _hash_cells(cells, {str(config.root): "{study}", str(config.out): "{out}", str(config.path): "{study_file}"})
    return Study(name=config.name, path=config.path, root=config.root, cells=cells, baseline=config.baseline,
                 probe=config.probe is not None, cluster=config.cluster)


def _launcher(launcher: list[str], resources: Resources, where: str) -> list[str]:
    """The training launcher with its process count taken from the allocation (one process per GPU).

    An explicit ``--num_processes`` that disagrees with ``resources.train.gpus`` is refused: the global batch
    (and so the training) would silently differ from what the study states.
    """
    if not launcher:
        if resources.gpus > 1:
            raise MedbenchError(f"{where}: resources.train.gpus is {resources.gpus} but no launcher is set; add "
                                "launcher: [accelerate, launch, --config_file, trainers/accelerate/multi_gpu.yaml]")
        return []
    stated = _flag_value(launcher, "--num_processes")
    if resources.gpus == 0:
        return launcher  # CPU processes: the launcher's own count (e.g. trainers/accelerate/cpu_2proc.yaml)
    wanted = resources.gpus * resources.nodes
    if stated is not None and int(stated) != wanted:
        raise MedbenchError(f"{where}: --num_processes {stated} but resources.train gives {wanted} GPU(s); drop "
                            "--num_processes (medbench sets it from resources.train.gpus)")
    return launcher if stated is not None else [*launcher[:2], "--num_processes", str(wanted), *launcher[2:]]


def _flag_value(words: list[str], flag: str) -> str | None:
    for index, word in enumerate(words):
        if word == flag and index + 1 < len(words):
            return words[index + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return None


def _processes(launcher: list[str]) -> int:
    """How many training processes a launcher starts (1 without one)."""
    if not launcher:
        return 1
    stated = _flag_value(launcher, "--num_processes")
    if stated is not None:
        return int(stated)
    config = _flag_value(launcher, "--config_file")
    if config and Path(config).is_file():
        loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        return int(loaded.get("num_processes", 1)) if isinstance(loaded, dict) else 1
    return 1


def _global_batch(settings: dict[str, Any], global_batch: int | None, processes: int, where: str) -> dict[str, Any]:
    """Check (or complete) per-device batch x processes x accumulation against the study's global batch."""
    if global_batch is None:
        return settings
    per_device = settings.get("per_device_train_batch_size")
    if not isinstance(per_device, int):
        raise MedbenchError(f"{where}: global_batch {global_batch} needs train.per_device_train_batch_size")
    accumulation = settings.get("gradient_accumulation_steps")
    if accumulation is None:
        if global_batch % (per_device * processes):
            raise MedbenchError(f"{where}: global_batch {global_batch} is not a multiple of per-device batch "
                                f"{per_device} x {processes} process(es); change per_device_train_batch_size")
        return {**settings, "gradient_accumulation_steps": global_batch // (per_device * processes)}
    if per_device * processes * int(accumulation) != global_batch:
        raise MedbenchError(f"{where}: per-device batch {per_device} x {processes} process(es) x accumulation "
                            f"{accumulation} = {per_device * processes * int(accumulation)}, not global_batch "
                            f"{global_batch}; drop gradient_accumulation_steps (it is derived) or fix the batch")
    return settings


def installed_versions() -> dict[str, str]:
    """The installed version of every distribution in :data:`VERSIONED` (``absent`` when not installed)."""
    versions = {}
    for name in sorted({name for names in VERSIONED.values() for name in names}):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def recipes_dir() -> Path:
    """The shipped recipes' folder (``trainers/recipes``), found without importing ``medbench.train``."""
    found = importlib.util.find_spec("medbench.train")
    if found is None or not found.origin:
        return Path("recipes")
    return Path(found.origin).parent / "recipes"


def _recipe_identity(recipe: str) -> str:
    """The content digest of the recipe file a training cell reads (a shipped name or a path)."""
    path = Path(recipe) if Path(recipe).is_file() else recipes_dir() / f"{Path(recipe).stem}.yaml"
    return _file_digest(path)


def _profile_identity(profile: str) -> str:
    path = Path(profile) if Path(profile).is_file() else recipes_dir().parent / "backbones" / f"{profile}.yaml"
    return _file_digest(path)


def _checkpoint_identity(model: str, revision: Any, root: Path) -> str:
    """A backbone's identity: a local folder's manifest hash, or the hub id with its revision.

    A folder the study makes itself (under its output) is covered by the hash of the cell that makes it.
    The manifest is each file's relative name and size, plus the content of files under 64 MiB (configs,
    tokenizers, small weights) and the first and last MiB of larger ones, so a 14 GB checkpoint is hashed in
    a moment and a changed weight file still changes its size, head or tail in practice.
    """
    folder = Path(model)
    if folder.resolve().is_relative_to(root.resolve()):
        return "study output"
    if not folder.is_dir():
        return f"hub:{model}@{revision or 'unpinned'}"
    digest = hashlib.sha256()
    for file in sorted(item for item in folder.rglob("*") if item.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(folder).as_posix()}\0{size}\0".encode())
        with file.open("rb") as handle:
            if size <= 64 << 20:
                digest.update(handle.read())
            else:
                digest.update(handle.read(1 << 20))
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return f"folder:{digest.hexdigest()[:16]}"


def _substitute_prepare(value: Any, root: Path, names: set[str], where: str) -> Any:
    """Replace ``{prepare:NAME}`` with the folder of prepare cell NAME."""
    if isinstance(value, str):
        def folder(match: re.Match) -> str:
            if match.group(1) not in names:
                raise MedbenchError(f"{where}: {{prepare:{match.group(1)}}} names no entry of prepare: "
                                    f"({', '.join(sorted(names)) or 'none'})")
            return str(root / "prepare" / match.group(1))

        return _PREPARE.sub(folder, value)
    if isinstance(value, list):
        return [_substitute_prepare(item, root, names, where) for item in value]
    if isinstance(value, dict):
        return {key: _substitute_prepare(item, root, names, where) for key, item in value.items()}
    return value


def _file_digest(path: Path) -> str:
    if not path.is_file():
        return "missing"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _portable(value: Any, places: dict[str, str]) -> Any:
    """``value`` with each place (a path prefix) written as its placeholder, so a hash ignores locations."""
    if isinstance(value, str):
        for place, placeholder in sorted(places.items(), key=lambda item: -len(item[0])):
            value = re.sub(rf"(?<![\w./-]){re.escape(place)}(?=[/,\s]|$)", placeholder.replace("\\", "\\\\"), value)
        return value
    if isinstance(value, list):
        return [_portable(item, places) for item in value]
    if isinstance(value, dict):
        return {key: _portable(item, places) for key, item in value.items()}
    return value


def _hash_cells(cells: list[Cell], places: dict[str, str]) -> None:
    """Set each cell's hash from its command, environment, identity, input contents and its dependencies' hashes.

    Paths under the study's output folder (and the output folder and study file themselves) are hashed as
    placeholders, and given input files by content, so moving or renaming folders changes no hash.
    """
    by_id: dict[str, Cell] = {}
    for cell in cells:
        missing = [dep for dep in cell.deps if dep not in by_id]
        if missing:
            raise MedbenchError(f"study cell {cell.id} depends on {missing[0]}, which comes later or is absent")
        inputs = {str(path): f"{{input:{_file_digest(path)}}}" for path in cell.inputs}
        record = {
            "argv": _portable(cell.argv, {**places, **inputs}), "launcher": cell.launcher,
            "env": _portable(cell.env, {**places, **inputs}), "identity": cell.identity,
            "inputs": sorted(inputs.values()),
            "deps": {dep: by_id[dep].hash for dep in cell.deps},
        }
        cell.hash = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
        by_id[cell.id] = cell
