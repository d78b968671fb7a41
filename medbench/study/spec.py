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
      eval: {gpus: 1, cpus: 8}      # launcher runs one process per GPU; none of this enters a cell's hash
    cluster: {partition: gpu, account: lab, qos: normal, sbatch: ["--constraint=a100"]}  # `--executor slurm`

Backbones may state ``revision:`` (a hub revision, part of the hash). Cell hashes do not depend on where the
study's output folder lives: paths under it are hashed relative to it, so a moved folder stays done.

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
    """``{"beta": 0.1, "use_lora": true}`` -> ``["--beta", "0.1", "--use_lora", "true"]``."""
    if not isinstance(mapping, dict):
        raise MedbenchError(f"{where}: expected a mapping of option: value")
    argv = []
    for key, value in mapping.items():
        if isinstance(value, (dict, list)):
            raise MedbenchError(f"{where}.{key}: give a single value (a string, number or boolean)")
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def _file(value: str) -> Path:
    return Path(value)


def _is_true(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def load_study(path: Path, out: Path | None = None) -> Study:
    """Read ``path`` and expand it into cells (nothing is run).

    Args:
        path: The study YAML.
        out: Folder holding every study's outputs (default ``studies-out``); the study's own folder is
            ``out/NAME``.

    Raises:
        MedbenchError: The file is missing or malformed; the message names the key and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise MedbenchError(f"{path}: no such study file (examples: medbench/studies/paper.yaml, medbench/studies/tiny.yaml)")
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
        raise MedbenchError(f"{path}: prepare: map each name to a medbench command, e.g. data: [synth, vqa, --out, "
                            "\"{prepare:data}\"]")
    prepare_deps = {key: [f"prepare/{name}" for name in dict.fromkeys(_PREPARE.findall(" ".join(map(str, argv))))
                          if name != key] for key, argv in prepare.items()}
    raw = _substitute_prepare({k: v for k, v in raw.items() if k != "prepare"}, root, set(prepare), str(path))
    prepare = _substitute_prepare(prepare, root, set(prepare), f"{path}: prepare")
    common_env = {str(k): str(v) for k, v in (raw.get("env") or {}).items()}

    backbones = raw.get("backbones")
    if not isinstance(backbones, dict) or not backbones:
        raise MedbenchError(f"{path}: backbones: name at least one, e.g. backbones: {{tiny: {{model: DIR}}}}")
    recipes = [str(recipe) for recipe in raw.get("recipes") or []]
    seeds = raw.get("seeds") or [42]
    if not all(isinstance(seed, int) for seed in seeds):
        raise MedbenchError(f"{path}: seeds: give whole numbers, e.g. seeds: [1, 2]")
    want_sft = _is_true(raw.get("sft", True))
    want_base = _is_true(raw.get("base", True))
    variants_from = str(raw.get("variants_from", BASE))
    if variants_from not in (BASE, SFT):
        raise MedbenchError(f"{path}: variants_from: {variants_from!r}; choose base or sft")
    if variants_from == SFT and not want_sft:
        raise MedbenchError(f"{path}: variants_from: sft needs sft: true")
    if SFT in recipes:
        raise MedbenchError(f"{path}: recipes: leave out sft; it is trained by `sft: true`")

    data = raw.get("data") or {}
    if not isinstance(data, dict):
        raise MedbenchError(f"{path}: data: expected preferences:, build:, sft:, image_root:")
    if bool(data.get("preferences")) == bool(data.get("build")):
        raise MedbenchError(f"{path}: data: give exactly one of preferences: FILE or build: [medbench prefs build args]")
    train_settings = raw.get("train") or {}
    _flags(train_settings, f"{path}: train")
    recipe_train = raw.get("recipe_train") or {}
    resources_raw = raw.get("resources") or {}
    if not isinstance(resources_raw, dict) or set(resources_raw) - set(CELL_KINDS):
        raise MedbenchError(f"{path}: resources: map cell kinds ({', '.join(CELL_KINDS)}) to {{gpus:, cpus:, mem:, "
                            "time:}")
    resources = {kind: Resources.parse(resources_raw.get(kind), f"{path}: resources.{kind}") for kind in CELL_KINDS}
    launcher = _launcher([str(word) for word in raw.get("launcher") or []], resources["train"], f"{path}: launcher")
    processes = _processes(launcher)
    evaluation = raw.get("eval") or {}
    tasks = evaluation.get("tasks") or []
    if not tasks:
        raise MedbenchError(f"{path}: eval.tasks: name the medbench tasks to evaluate, e.g. [medbench_vqa_rad]")
    eval_env = {str(k): str(v) for k, v in (evaluation.get("env") or {}).items()}
    eval_args = [str(arg) for arg in evaluation.get("args") or []]
    eval_model = str(evaluation.get("model") or "medbench_hf")
    use_lora = _is_true((raw.get("train") or {}).get("use_lora", False))

    cells: list[Cell] = [
        Cell(id=f"prepare/{key}", kind="prepare", argv=[str(word) for word in argv], deps=prepare_deps[key],
             meta={"prepare": key})
        for key, argv in prepare.items()
    ]
    prepared = [cell.id for cell in cells]
    image_root = data.get("image_root")
    image_flags = ["--image_root", str(_file(image_root))] if image_root else []

    def preference_file(recipe: str) -> tuple[Path, list[str], list[Path]]:
        if data.get("preferences"):
            file = _file(str(data["preferences"]))
            return file, [], [file]
        return root / f"prefs/{recipe}" / "prefs.jsonl", [f"prefs/{recipe}"], []

    if data.get("build"):
        build_args = [str(arg) for arg in data["build"]]
        for recipe in recipes + ([SFT] if want_sft and not data.get("sft") else []):
            cells.append(Cell(
                id=f"prefs/{recipe}", kind="prefs",
                argv=["prefs", "build", *build_args, "--recipe", recipe, "--output_dir", str(root / f"prefs/{recipe}")],
                meta={"recipe": recipe},
            ))

    probe = raw.get("probe") or {}
    if probe and (not isinstance(probe, dict) or bool(probe.get("preferences")) == bool(probe.get("build"))):
        raise MedbenchError(f"{path}: probe: give exactly one of preferences: FILE or build: [medbench prefs build args]")
    probe_args = [str(arg) for arg in probe.get("args") or []]
    heldout: tuple[Path, list[str], list[Path]] | None = None
    if probe.get("build"):
        build_args = [str(arg) for arg in probe["build"]]
        if "--recipe" not in build_args:
            raise MedbenchError(f"{path}: probe.build: name the pairs' recipe, e.g. [..., --recipe, mdpo]")
        cells.append(Cell(id=HELDOUT, kind="prefs", argv=["prefs", "build", *build_args, "--output_dir",
                                                          str(root / HELDOUT)], meta={"recipe": "heldout"}))
        heldout = (root / HELDOUT / "prefs.jsonl", [HELDOUT], [])
    elif probe.get("preferences"):
        file = _file(str(probe["preferences"]))
        heldout = (file, [], [file])

    def probe_cell(backbone: str, variant: str, seed: int | None, model: str, deps: list[str]) -> Cell:
        assert heldout is not None
        file, probe_deps, inputs = heldout
        cell_id = f"{backbone}/{variant}/{'s' + str(seed) if seed is not None else 'model'}/probe"
        argv = ["prefs", "score", model, str(file), "--output_dir", str(root / cell_id), "--no_progress", *probe_args]
        if not probe_deps:
            argv += image_flags
        return Cell(id=cell_id, kind="probe", argv=argv, deps=deps + probe_deps, inputs=inputs,
                    meta={"backbone": backbone, "variant": variant, "seed": seed})

    def train_cell(backbone: str, spec: dict, recipe: str, seed: int, start: str, start_deps: list[str]) -> Cell:
        if recipe == SFT and data.get("sft"):
            file, deps, inputs = _file(str(data["sft"])), [], [_file(str(data["sft"]))]
        else:
            file, deps, inputs = preference_file(recipe)
        cell_id = f"{backbone}/{recipe}/s{seed}/train"
        argv = ["train", "--config", recipe, "--model", start, "--data", str(file), "--output_dir", str(root / cell_id)]
        if not deps:  # a given file; built ones keep their images beside them
            argv += image_flags
        if spec.get("profile"):
            argv += ["--backbone", str(spec["profile"])]
        # A recipe's own settings replace the study-wide ones (one flag each, so the command reads plainly).
        overrides = recipe_train.get(recipe) or {}
        _flags(overrides, f"{path}: recipe_train.{recipe}")
        settings = _global_batch({**train_settings, **overrides}, raw.get("global_batch"), processes,
                                 f"{path}: recipe {recipe}")
        argv += ["--seed", str(seed), *_flags(settings, f"{path}: train")]
        identity = {"recipe": _recipe_identity(recipe)}
        if spec.get("profile"):
            identity["profile"] = _profile_identity(str(spec["profile"]))
        return Cell(id=cell_id, kind="train", argv=argv, launcher=launcher, deps=deps + start_deps,
                    inputs=inputs, meta={"backbone": backbone, "variant": recipe, "seed": seed}, identity=identity)

    def model_of(train: Cell) -> str:
        folder = root / train.id
        return str(folder / "merged") if use_lora else str(folder)

    def eval_cell(backbone: str, spec: dict, variant: str, seed: int | None, model: str, deps: list[str]) -> Cell:
        cell_id = f"{backbone}/{variant}/{'s' + str(seed) if seed is not None else 'model'}/eval"
        model_args = f"pretrained={model}" + (f",{spec['eval_model_args']}" if spec.get("eval_model_args") else "")
        # An evaluation given several GPUs runs data-parallel, one lmms-eval process per GPU.
        processes = ["--processes", str(resources["eval"].gpus)] if resources["eval"].gpus > 1 else []
        argv = ["eval", *processes, "--model", eval_model, "--model_args", model_args, "--tasks",
                ",".join(map(str, tasks)), "--output_path", str(root / cell_id), *eval_args]
        return Cell(id=cell_id, kind="eval", argv=argv, env=eval_env, deps=deps,
                    meta={"backbone": backbone, "variant": variant, "seed": seed})

    for backbone, spec in backbones.items():
        if not isinstance(spec, dict) or not spec.get("model"):
            raise MedbenchError(f"{path}: backbones.{backbone}: give model: PATH_OR_HUB_ID")
        model = str(spec["model"])
        checkpoint = _checkpoint_identity(model, spec.get("revision"), root)
        first = len(cells)
        if want_base:
            cells.append(eval_cell(backbone, spec, BASE, None, model, []))
            if heldout:
                cells.append(probe_cell(backbone, BASE, None, model, []))
        for seed in seeds:
            sft_train = None
            if want_sft:
                sft_train = train_cell(backbone, spec, SFT, seed, model, [])
                cells += [sft_train, eval_cell(backbone, spec, SFT, seed, model_of(sft_train), [sft_train.id])]
                if heldout:
                    cells.append(probe_cell(backbone, SFT, seed, model_of(sft_train), [sft_train.id]))
            for recipe in recipes:
                start, deps = (model_of(sft_train), [sft_train.id]) if variants_from == SFT and sft_train else (model, [])
                train = train_cell(backbone, spec, recipe, seed, start, deps)
                cells += [train, eval_cell(backbone, spec, recipe, seed, model_of(train), [train.id])]
                if heldout:
                    cells.append(probe_cell(backbone, recipe, seed, model_of(train), [train.id]))
        # Cells that read the backbone checkpoint itself (the others read it through their dependencies' hashes).
        for cell in cells[first:]:
            if model in cell.argv or f"pretrained={model}" in " ".join(cell.argv):
                cell.identity["checkpoint"] = checkpoint

    references = evaluation.get("references") or {}
    if not isinstance(references, dict):
        raise MedbenchError(f"{path}: eval.references: map a name to {{model: LMMS_EVAL_MODEL, model_args: ...}}")
    for reference, spec in references.items():
        if not isinstance(spec, dict) or not spec.get("model"):
            raise MedbenchError(f"{path}: eval.references.{reference}: give model: an lmms-eval model name")
        cell_id = f"{REFERENCE}/{reference}/eval"
        argv = ["eval", "--model", str(spec["model"]), "--tasks", ",".join(map(str, tasks)),
                "--output_path", str(root / cell_id)]
        if spec.get("model_args"):
            argv += ["--model_args", str(spec["model_args"])]
        cells.append(Cell(id=cell_id, kind="eval", argv=argv, env=eval_env, deps=[],
                          meta={"backbone": REFERENCE, "variant": str(reference), "seed": None}))

    board = raw.get("board") or {}
    baseline = board.get("baseline")
    if baseline is not None and baseline not in {BASE, SFT, *recipes}:
        raise MedbenchError(f"{path}: board.baseline: {baseline!r}; choose base, sft or one of the recipes")
    finals = [cell for cell in cells if cell.kind in ("eval", "probe")]
    # The board verifies every run against the test data, so it reads the data the evaluation cells read.
    cells.append(Cell(id="board", kind="board", argv=["study", "board", str(path), "--out", str(out)], env=eval_env,
                      deps=[c.id for c in finals]))
    versions = installed_versions()
    for cell in cells:
        if cell.kind != "prepare":
            cell.deps = [*prepared, *cell.deps]
        cell.env = {**common_env, **cell.env}
        cell.resources = resources[cell.kind]
        cell.identity = {**cell.identity, **{f"version:{name}": versions[name] for name in VERSIONED[cell.kind]}}
    _hash_cells(cells, {str(root): "{study}", str(out): "{out}", str(path): "{study_file}"})
    return Study(name=name, path=path, root=root, cells=cells, baseline=baseline, probe=heldout is not None,
                 cluster=Cluster.parse(raw.get("cluster"), f"{path}: cluster"))


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


def _global_batch(settings: dict[str, Any], global_batch: Any, processes: int, where: str) -> dict[str, Any]:
    """Check (or complete) per-device batch x processes x accumulation against the study's global batch."""
    if global_batch is None:
        return settings
    if not isinstance(global_batch, int) or global_batch < 1:
        raise MedbenchError(f"{where}: global_batch: {global_batch!r}; give a whole number such as 16")
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
