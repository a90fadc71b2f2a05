"""`cldg run CONFIG.toml` and `cldg ablate CONFIG.toml`: every stage in order from one TOML file.

The config has the common keys at top level (`workdir`, `seed`, `device`, ...), one table per stage
(`[prepare]`, `[index]`, `[train_matcher]`, `[mine_samples]`, `[pretrain]`, `[contrastive_train]`,
`[evaluate]`) with the same keys as the stage's long options, and optional `[run]` and `[ablate]` tables:

    [run]
    evaluate_models = ["reference", "contrastive"]   # each gets its own evaluate artifact (default: the model
                                                      # of every approach, `cldg approaches`)
    skip = []                                         # stage tables to leave out, e.g. ["train_matcher"]
    seeds = [13, 14, 15]                              # rerun the seed-dependent stages once per seed
    seed_stages = ["pretrain", "contrastive_train", "evaluate"]   # which stages those are
    human_eval = 100                                  # blind A/B sheets of that many test contexts for the first
                                                      # model against each other one (WORKDIR/human-eval/; 0: none)
    parallel = true                                   # train the matcher and mine (another process) while the
                                                      # MLE reference trains, each on half the threads (below)
    reports = "dropout-on"                            # where this run's compare/, seeds/, human-eval/, ablation/
                                                      # and run-summary.json go (relative: under the workdir;
                                                      # default the workdir itself), so a variant config that
                                                      # shares a workdir keeps its reports beside the others'

    [ablate]
    ks = [1, 2, 3, 4, 5]                              # the group-size study (mining keeps max(ks))
    variants = ["no_group", "no_positive_group", ...] # the Table 5 rows (default: all six)

Each step is handed the artifacts the steps before it built (not whatever `latest` points at), so the
runs of several seeds share one workdir safely. Each stage skips itself when its artifact (same
fingerprint) is complete and resumes from its `.partial` directory when it was interrupted, so
rerunning after a crash or Ctrl-C continues where it stopped. With several seeds the data stages
(prepare, index, matcher, mining: the top-level seed) are built once and every seed reuses them.

With `[run] parallel = true` (or `cldg run --parallel`) the data stages that the MLE reference does not need
(index, train-matcher, mine-samples: the "side branch", `side_branch`) run in a second process while the first
seed's reference trains, each side on half the torch threads (1 and 1 on 2 cores); with several seeds the side
branch then trains some of the later seeds' references too (`split_seeds`), and every contrastive training
follows all the references. On 2 cores the small
models of the demo gain little from a second thread (a seq2seq step 1.2x), so two stages on one thread each
finish sooner than one after the other on two. Floats depend on the thread count, so the thread count of each
stage is fixed by the plan, not by what happens to be running: the side branch's stages and the stages that
run beside it (`pretrain`, for every seed) always get their half, so a seed's models are the same in a
one-seed and a many-seed run, and `cldg ablate` uses the same counts (`plan_threads`). Every manifest records
its torch_threads; to rebuild one of these stages alone with the same floats give it that `--torch-threads`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from cldg.approaches import model_name_stages, model_stages
from cldg.artifacts import Artifact
from cldg.config import CommonOptions, config_from_table, load_toml
from cldg.training.options import train_option_problems
from cldg.errors import CldgError
from cldg.progress import console, make_progress
from cldg.stages import ARTIFACT_ORDER, BY_TABLE, STAGES, stage_module

# (TOML table, stage module, label), in pipeline order, from the one stage registry
PIPELINE: list[tuple[str, str, str]] = [(s.table, s.module, s.command) for s in STAGES]
KNOWN_TABLES = {t for t, _, _ in PIPELINE} | {"run", "ablate"}
RUN_KEYS = {"evaluate_models", "skip", "seeds", "seed_stages", "human_eval", "reports", "parallel"}
ABLATE_KEYS = {"ks", "variants"}
# the baselines trained by the generic stage run only when the config has their table ([mmi_train], ...):
# a config written before them trains what it always trained
OPTIONAL_TABLES = {s.table for s in STAGES if s.approach}
DEFAULT_SEED_STAGES = ("pretrain", "contrastive_train", *sorted(OPTIONAL_TABLES), "evaluate")
# the ablations of the paper's Table 5, in its order (each a contrastive-train flag)
ABLATIONS = ("no_group", "no_positive_group", "no_negative_group", "context_side_only", "response_side_only",
             "no_matching_scores")
# which option of a step takes the artifact of which stage built earlier in the same run
INPUT_OPTIONS = {
    "index": {"prepare_dir": "prepare"},
    "train_matcher": {"prepare_dir": "prepare"},
    "mine_samples": {"prepare_dir": "prepare", "index_dir": "index", "matcher_dir": "matcher"},
    "pretrain": {"prepare_dir": "prepare"},
    "contrastive_train": {"reference_dir": "reference", "samples_dir": "samples"},
    # an approach's generic stage takes each artifact it needs as --<need>-dir
    **{s.table: {f"{need}_dir": need for need in stage_module(s).approach.needs} for s in STAGES if s.approach},
}


@dataclasses.dataclass
class Step:
    table: str
    module: Any
    label: str
    cfg: Any


@dataclasses.dataclass
class StepResult:
    label: str
    artifact: Artifact
    skipped: bool
    seconds: float
    seed: int
    started: float = 0.0  # seconds after the run began (steps of the side branch overlap the others)
    threads: int = 0      # torch threads it ran with


@dataclasses.dataclass
class Plan:
    common: CommonOptions
    steps: list[Step]
    seeds: list[int]
    seed_stages: set[str]
    doc: dict[str, Any]
    where: str
    human_eval: int = 0  # [run] human_eval: items per A/B sheet (0: no sheets)
    reports: Path | None = None  # [run] reports under the workdir: this run's comparisons and summaries (load_plan)
    parallel: bool = False  # [run] parallel: the side branch runs beside the reference's training (module doc)


def check_config_doc(doc: dict[str, Any], where: str) -> None:
    """Unknown tables and keys of a pipeline TOML are one line (a stage command given --config checks it too)."""
    common_keys = {f.name for f in dataclasses.fields(CommonOptions)} - {"config"}
    for key, value in doc.items():
        if isinstance(value, dict):
            if key not in KNOWN_TABLES:
                raise CldgError(f"{where}: unknown table [{key}] (known: {', '.join(sorted(KNOWN_TABLES))})")
        elif key not in common_keys:
            raise CldgError(f"{where}: unknown top-level key {key!r} (known: {', '.join(sorted(common_keys))})")
    for table, known in (("run", RUN_KEYS), ("ablate", ABLATE_KEYS)):
        for key in doc.get(table, {}):
            if key not in known:
                raise CldgError(f"{where} [{table}]: unknown key {key!r} (known: {', '.join(sorted(known))})")


def _int_list(value: Any, where: str, low: int = 0) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           and v >= low for v in value):
        raise CldgError(f"{where}: expected a non-empty list of integers >= {low}, got {value!r}")
    if len(set(value)) != len(value):
        raise CldgError(f"{where}: {value!r} repeats a value")
    return list(value)


def _str_list(value: Any, where: str, allow_empty: bool = False) -> list[str]:
    """A TOML list of strings; a bare string ("index" for ["index"]) would otherwise be read letter by letter."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or (not value and not allow_empty):
        raise CldgError(f"{where}: expected a list of names, e.g. [\"contrastive\"], got {value!r}")
    return value


def parse_seeds(text: str, option: str = "--seeds", what: str = "integers", example: str = "13,14,15") -> list[int]:
    """`--seeds 13,14,15` -> [13, 14, 15] (also `--ks`); anything else is one clear line naming the option."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CldgError(f"{option} {text!r}: expected comma-separated {what}, e.g. {example}") from None
    return _int_list(seeds, f"{option} {text!r}")


def plan_steps(doc: dict[str, Any], where: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(table, module, label, overrides) for every step this config runs, in order."""
    run_table = doc.get("run", {})
    skip = set(_str_list(run_table.get("skip", []), f"{where} [run] skip", allow_empty=True))
    unknown = skip - {t for t, _, _ in PIPELINE}
    if unknown:
        raise CldgError(f"{where} [run]: skip names unknown stage tables {sorted(unknown)}")
    if doc.get("mine_samples", {}).get("matcher") == "bm25":
        skip.add("train_matcher")
    absent = {a for s in STAGES if s.table in OPTIONAL_TABLES and s.table not in doc for a in s.artifacts}
    # every approach's model, but a baseline's only when the config trains it
    stages = model_name_stages()  # 'mle' evaluates the model it makes, 'reference'
    models = run_table.get("evaluate_models", [m for m in model_stages() if m not in absent])
    models = [stages.get(m, m) for m in _str_list(models, f"{where} [run] evaluate_models", allow_empty=True)]
    for model in models:
        if model not in model_stages() and not model.startswith("hf:") and not Path(model).is_dir():
            raise CldgError(f"{where} [run] evaluate_models: {model!r} is not a model ({', '.join(sorted(stages))}), "
                            "a model artifact directory or hf:PATH")
    steps = []
    for table, module, label in PIPELINE:
        if table in skip or (table in OPTIONAL_TABLES and table not in doc):
            continue
        if table == "evaluate":
            for model in models:
                steps.append((table, module, f"evaluate ({model})", {"model": model}))
        else:
            steps.append((table, module, label, {}))
    return steps


def load_plan(config: Path, workdir: Path | None = None, force: bool = False, device: str | None = None,
              seeds: list[int] | None = None, table_overrides: dict[str, dict[str, Any]] | None = None,
              parallel: bool | None = None) -> Plan:
    """Read and check the whole config before anything runs: a typo in the last table fails before hours of
    training."""
    doc = load_toml(config)
    where = str(config)
    check_config_doc(doc, where)
    top = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    overrides: dict[str, Any] = {"config": config, "force": force}
    if workdir is not None:
        overrides["workdir"] = workdir
    if device is not None:
        overrides["device"] = device
    common = config_from_table(CommonOptions, top, where, overrides)
    run_table = doc.get("run", {})
    if seeds is None and "seeds" in run_table:
        seeds = _int_list(run_table["seeds"], f"{where} [run] seeds")
    seed_stages = run_table.get("seed_stages", list(DEFAULT_SEED_STAGES))
    if not isinstance(seed_stages, list) or not set(seed_stages) <= {t for t, _, _ in PIPELINE}:
        raise CldgError(f"{where} [run] seed_stages: expected stage tables among "
                        f"{', '.join(t for t, _, _ in PIPELINE)}, got {seed_stages!r}")
    human_eval = run_table.get("human_eval", 0)
    if not isinstance(human_eval, int) or isinstance(human_eval, bool) or human_eval < 0:
        raise CldgError(f"{where} [run] human_eval: expected a number of test contexts >= 0, got {human_eval!r}")
    reports = run_table.get("reports")
    if reports is not None and (not isinstance(reports, str) or not reports.strip()):
        raise CldgError(f"{where} [run] reports: expected a folder name or path, got {reports!r}")
    if parallel is None:
        parallel = run_table.get("parallel", False)
        if not isinstance(parallel, bool):
            raise CldgError(f"{where} [run] parallel: expected true or false, got {parallel!r}")
    steps = []
    for table, module_name, label, extra in plan_steps(doc, where):
        module = stage_module(BY_TABLE[table])
        values = {**extra, **(table_overrides or {}).get(table, {})}
        cfg = config_from_table(module.Config, doc.get(table, {}), f"{where} [{table}]", values)
        problems = (cfg.problems() if callable(getattr(cfg, "problems", None)) else []) + train_option_problems(cfg)
        if problems:  # here, not when the stage's turn comes after hours of the stages before it
            raise CldgError(f"{where} [{table}]: {problems[0]}")
        steps.append(Step(table, module, label, cfg))
    return Plan(common, steps, seeds or [common.seed], set(seed_stages), doc, where, human_eval,
                common.workdir / (reports or ""), parallel)  # an absolute reports path stays; none: the workdir


def step_needs(step: Step) -> set[str]:
    """The artifacts (stage names: 'prepare', 'samples', ...) a step takes from the steps before it."""
    needs = set(INPUT_OPTIONS.get(step.table, {}).values())
    if step.table == "evaluate" and getattr(step.cfg, "model", None) in ARTIFACT_ORDER:
        needs.add(step.cfg.model)
    return needs


def side_branch(plan: Plan) -> tuple[list[Step], list[Step]]:
    """(side, beside): the longest tail of the data steps whose artifacts the first seed steps do not need, and
    those first seed steps (up to the first that needs one). Both empty when nothing can overlap. The first
    data step (prepare, which everything reads) stays on the main line."""
    data = [s for s in plan.steps if s.table not in plan.seed_stages]
    seed_steps = [s for s in plan.steps if s.table in plan.seed_stages]
    best: tuple[list[Step], list[Step]] = ([], [])
    for cut in range(len(data) - 1, 0, -1):
        tail = data[cut:]
        made = {a for s in tail for a in BY_TABLE[s.table].artifacts}
        beside = []
        for s in seed_steps:
            if step_needs(s) & made:
                break
            beside.append(s)
        if not beside:
            break  # a longer tail makes more, so nothing could run beside it either
        best = (tail, beside)
    return best


def parallel_branch(plan: Plan, threads: int) -> tuple[list[Step], list[Step]]:
    """`side_branch` when this run overlaps it: `parallel` on, at least 2 threads to share, one process (under
    torchrun every rank would start its own side branch, each mining the same samples); else nothing."""
    one_process = int(os.environ.get("WORLD_SIZE", "1") or 1) == 1
    return side_branch(plan) if plan.parallel and threads >= 2 and one_process else ([], [])


def branch_threads(side: list[Step], beside: list[Step], threads: int) -> dict[str, int]:
    """Torch threads per stage table: the side branch's stages get half and the stages beside it the other half,
    in every seed and whatever runs at the same time (so the floats do not depend on the schedule); every other
    stage (none at all without a side branch) gets them all."""
    if not side:
        return {}
    return {**{s.table: threads - threads // 2 for s in beside}, **{s.table: threads // 2 for s in side}}


def plan_threads(plan: Plan, threads: int) -> dict[str, int]:
    """The torch threads per stage table that `cldg run` gives this plan on `threads` (`branch_threads`)."""
    return branch_threads(*parallel_branch(plan, threads), threads)


def with_threads(cfg: Any, threads: int) -> Any:
    """A stage config whose own worker threads (indexing, BM25 search) stay within the stage's share."""
    if dataclasses.is_dataclass(cfg) and any(f.name == "threads" for f in dataclasses.fields(cfg)):
        return dataclasses.replace(cfg, threads=min(cfg.threads, threads))
    return cfg


def execute_step_on(threads: int, step: Step, common: CommonOptions, built: dict[str, Artifact],
                    cfg: Any = None) -> tuple[Artifact, int]:
    """`execute_step` on the plan's thread count for the stage (its own worker threads within it); returns the
    artifact and the torch threads it ran on."""
    from cldg.runtime import configure_runtime

    n = configure_runtime(common.deterministic, threads)
    return execute_step(step, common, built, with_threads(cfg if cfg is not None else step.cfg, n)), n


def execute_step(step: Step, common: CommonOptions, built: dict[str, Artifact], cfg: Any = None) -> Artifact:
    """Run one stage with the artifacts built before it in this run as its inputs (unless the config names
    them), and record what it built."""
    cfg = cfg if cfg is not None else step.cfg
    for option_name, stage in INPUT_OPTIONS.get(step.table, {}).items():
        if getattr(cfg, option_name) is None and stage in built:
            cfg = dataclasses.replace(cfg, **{option_name: built[stage].path})
    if step.table == "evaluate" and cfg.model in built:
        cfg = dataclasses.replace(cfg, model=str(built[cfg.model].path))
    art = step.module.run(cfg, common)
    built[art.stage] = art
    return art


class SideBranch:
    """The side branch in a second process, spawned (torch's thread pools do not survive a fork): the data steps
    `steps`, then `seed_steps` for each of `seeds` (with several seeds, some seeds' references train there while
    the others train in the main process). Its console output goes to a log that is shown when the branch is
    collected. Ctrl-C reaches both processes and each stage saves where it was, so a rerun resumes both."""

    def __init__(self, steps: list[Step], seed_steps: list[Step], seeds: list[int], threads: dict[str, int],
                 built: dict[str, Artifact], log: Path, job: dict[str, Any]):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.log, self.done = log, False
        self.labels = [s.label for s in steps] + [f"{s.label} [seed {seed}]" for seed in seeds for s in seed_steps]
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        self.messages = context.Queue()
        job = {**job, "labels": [s.label for s in steps], "seed_labels": [s.label for s in seed_steps],
               "seeds": seeds, "threads": threads, "log": str(log),
               "built": {stage: str(a.path) for stage, a in built.items()}, "columns": console.width}
        self.process = context.Process(target=run_side_branch, args=(job, self.messages), daemon=True,
                                       name="cldg-side-branch")
        self.process.start()

    def collect(self, progress, task, data_built: list[dict[str, Artifact]], seed_built: dict[int, dict[str, Artifact]],
                results: list[StepResult], data_seed: int, t_start: float) -> None:
        """Wait for the branch to end. A data step's artifact goes into every dict of `data_built` and
        `seed_built`, a seed step's into that seed's; every step into `results`."""
        import queue

        label = " -> ".join(self.labels)
        progress.update(task, status=f"waiting for {label} (beside)")
        current = self.labels[0]
        while True:
            try:
                kind, *msg = self.messages.get(timeout=0.5)
            except queue.Empty:
                if self.process.is_alive():
                    continue
                try:  # it may have ended between the two calls, with its last words still in the queue
                    kind, *msg = self.messages.get(timeout=2)
                except queue.Empty:
                    raise CldgError(f"{current}, running beside, stopped (exit code {self.process.exitcode}) without "
                                    f"a word: its output is in {self.log}; rerun to resume") from None
            if kind == "start":
                current = msg[0]
            elif kind == "built":
                step_label, seed, path, reused, t0, t1, threads = msg
                art = dataclasses.replace(Artifact.load(Path(path), verify=False), reused=reused)
                for built in (data_built + list(seed_built.values())) if seed is None else [seed_built[seed]]:
                    built[art.stage] = art
                results.append(StepResult(step_label, art, reused, t1 - t0, data_seed if seed is None else seed,
                                          t0 - t_start, threads))
                progress.advance(task)
            elif kind == "done":
                break
            elif kind == "error":
                err = CldgError(f"{msg[0]} ({current}, run beside; its output: {self.log})")
                err.exit_code = msg[1]
                raise err
            elif kind == "interrupted":
                raise KeyboardInterrupt
            else:  # "crash": an internal error, with the branch's traceback in its log
                raise RuntimeError(f"{current}, running beside: {msg[0]} (traceback in {self.log})")
        self.process.join()
        self.done = True
        from rich.text import Text

        console.rule(f"[bold]{escape(label)} (ran beside)")
        console.print(Text(self.log.read_text().rstrip("\n")), soft_wrap=True)

    def stop(self) -> None:
        """After an error or Ctrl-C elsewhere: let the branch save its progress and end (SIGTERM, which every
        stage handles as Ctrl-C), then make sure it has."""
        if self.done or not self.process.is_alive():
            return
        self.process.join(timeout=5)  # Ctrl-C from the terminal reached it too: it may be saving already
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=120)
        if self.process.is_alive():
            self.process.kill()


def run_side_branch(job: dict[str, Any], messages) -> None:
    """The second process of `SideBranch`: its steps, in order, each on the plan's threads for its stage."""
    import signal
    import traceback

    log = open(job["log"], "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    from cldg.cli import _terminate
    from cldg.progress import results as results_console
    from cldg.runtime import offline_environment

    signal.signal(signal.SIGTERM, _terminate)  # a stage saves its progress on it, as on Ctrl-C
    console.width = results_console.width = job["columns"]
    try:
        offline_environment()
        plan = load_plan(Path(job["config"]), Path(job["workdir"]), job["force"], job["device"], parallel=True)
        built = {stage: Artifact.load(Path(path), verify=False) for stage, path in job["built"].items()}

        def run(step: Step, common: CommonOptions, run_built: dict[str, Artifact], seed: int | None) -> None:
            label = step.label + ("" if seed is None else f" [seed {seed}]")
            messages.put(("start", label))
            console.rule(f"[bold]{escape(label)}")
            t0 = time.time()
            art, threads = execute_step_on(job["threads"][step.table], step, common, run_built)
            messages.put(("built", label, seed, str(art.path), art.reused, t0, time.time(), threads))

        for step in plan.steps:
            if step.label in job["labels"]:
                run(step, plan.common, built, None)
        for seed in job["seeds"]:
            seed_built = dict(built)
            for step in plan.steps:
                if step.label in job["seed_labels"]:
                    run(step, dataclasses.replace(plan.common, seed=seed), seed_built, seed)
        messages.put(("done",))
    except CldgError as exc:
        messages.put(("error", str(exc), exc.exit_code))
    except KeyboardInterrupt:
        messages.put(("interrupted",))
    except BaseException as exc:  # noqa: BLE001 - told to the main process, which reports it as internal
        traceback.print_exc()
        messages.put(("crash", f"{type(exc).__name__}: {exc}"))
    finally:
        log.flush()


def split_seeds(seeds: list[int], threads: int) -> tuple[list[int], list[int]]:
    """(main, side): whose references train in the main process and whose in the side branch, after its data
    steps (counted as one reference's time: the demo's 405 s against 407). Only when both halves of the threads
    are equal (an even count), so that two references side by side never ask for more threads than there are."""
    if threads % 2:
        return seeds, []
    n_main = (len(seeds) + 2) // 2
    return seeds[:n_main], seeds[n_main:]


def run_pipeline(config: Path, workdir: Path | None = None, force: bool = False, device: str | None = None,
                 seeds: list[int] | None = None, parallel: bool | None = None) -> list[StepResult]:
    """The whole pipeline, once per seed for the seed-dependent stages; a comparison per seed, and with
    several seeds a summary across them (`WORKDIR/seeds/`). With `parallel`, the side branch runs beside the
    references (module docstring)."""
    from cldg.runtime import configure_runtime, offline_environment

    offline_environment()
    plan = load_plan(config, workdir, force, device, seeds, parallel=parallel)
    common = plan.common
    threads = configure_runtime(common.deterministic, common.torch_threads)
    side_steps, beside_steps = parallel_branch(plan, threads)
    stage_threads = branch_threads(side_steps, beside_steps, threads)
    main_seeds, side_seeds = split_seeds(plan.seeds, threads) if side_steps else (plan.seeds, [])
    reports = plan.reports
    warn_if_reports_belong_to_another_config(reports, config)
    data_steps = [s for s in plan.steps if s.table not in plan.seed_stages and s not in side_steps]
    seed_steps = [s for s in plan.steps if s.table in plan.seed_stages]
    several = len(plan.seeds) > 1

    results: list[StepResult] = []
    comparisons: dict[int, dict] = {}
    t_start = time.time()
    side: SideBranch | None = None
    try:
        with make_progress() as progress:
            total = len(data_steps) + len(side_steps) + len(seed_steps) * len(plan.seeds)
            overall = progress.add_task("pipeline", total=total, unit="stages", uneven=True)
            built: dict[str, Artifact] = {}

            def run_steps(steps: list[Step], run_common: CommonOptions, run_built: dict[str, Artifact]) -> None:
                for step in steps:
                    label = step.label + (f" [seed {run_common.seed}]" if several and step in seed_steps else "")
                    done = len(results) + 1
                    progress.update(overall, status=f"[{done}/{total}] {label}")
                    console.rule(f"[bold]{done}/{total} {escape(label)}")
                    t0 = time.time()
                    art, n = execute_step_on(stage_threads.get(step.table, threads), step, run_common, run_built)
                    results.append(StepResult(label, art, art.reused, time.time() - t0, run_common.seed,
                                              t0 - t_start, n))
                    progress.advance(overall)

            run_steps(data_steps, common, built)
            seed_built = {seed: dict(built) for seed in plan.seeds}
            if side_steps:
                # the side branch beside the references: the data steps the references do not need, then the
                # references of side_seeds; the main process trains those of main_seeds meanwhile
                side = SideBranch(side_steps, beside_steps, side_seeds, stage_threads, built,
                                  reports / "logs" / "side-branch.log",
                                  {"config": str(config), "workdir": str(common.workdir), "force": force,
                                   "device": device})
                console.print(f"[bold]{escape(' -> '.join(side.labels))}[/] run beside "
                              f"{', '.join(s.label for s in beside_steps)}"
                              f"{escape(' [seed ' + ', '.join(map(str, main_seeds)) + ']') if several else ''} in "
                              f"another process, on {threads // 2} of the {threads} threads; its output: {side.log}",
                              highlight=False, soft_wrap=True)
                for seed in main_seeds:
                    run_steps(beside_steps, dataclasses.replace(common, seed=seed), seed_built[seed])
                side.collect(progress, overall, [built], seed_built, results, common.seed, t_start)
            for seed in plan.seeds:
                seed_common = dataclasses.replace(common, seed=seed)
                first = len(results)
                run_steps([s for s in seed_steps if s not in beside_steps], seed_common, seed_built[seed])
                evals = [r.artifact for r in results[first:] if r.artifact.stage == "eval"]
                if len(evals) >= 2:
                    from cldg.tools.compare import compare_runs

                    out = reports / "compare" / (f"seed-{seed}" if several else "")
                    comparisons[seed] = compare_runs([a.path for a in evals], common.workdir, out_dir=out,
                                                     as_json=False)
                    if plan.human_eval:
                        export_human_eval_sheets(evals, plan.human_eval, reports / "human-eval", seed, several)
            progress.update(overall, status="done")
    finally:
        if side is not None:
            side.stop()

    _print_summary(results, time.time() - t_start)
    if several and comparisons:
        from cldg.reports import seed_summary

        seed_summary(comparisons, reports / "seeds")
    summary = {"config": str(config), "config_path": str(Path(config).resolve()), "workdir": str(common.workdir),
               "seeds": plan.seeds, "parallel": bool(side_steps),
               "total_s": round(time.time() - t_start, 1),
               "steps": [{"stage": r.label, "seed": r.seed, "artifact": str(r.artifact.path), "skipped": r.skipped,
                          "seconds": round(r.seconds, 1), "started_s": round(r.started, 1),
                          "torch_threads": r.threads} for r in sorted(results, key=lambda r: r.started)]}
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "run-summary.json").write_text(json.dumps(summary, indent=2))
    return results


def warn_if_reports_belong_to_another_config(reports: Path, config: Path) -> None:
    """Before any stage runs: one line when this run's comparisons and summaries would replace those of another
    config's run (a variant that shares the workdir), so the user can stop and give it `[run] reports`."""
    try:
        earlier = json.loads((reports / "run-summary.json").read_text())
    except (OSError, ValueError):
        return
    if not isinstance(earlier, dict):
        return
    theirs = earlier.get("config_path") or str(Path(earlier.get("config", "")).resolve())
    if earlier.get("config") and theirs != str(Path(config).resolve()):
        console.print(f"[yellow]warning:[/] {reports} holds the reports of {earlier['config']}; this run of {config} "
                      f"replaces its compare/, seeds/ and run-summary.json (give {config} `[run] reports = \"NAME\"` "
                      "to keep both)", highlight=False, soft_wrap=True)


def export_human_eval_sheets(evals: list[Artifact], n: int, out: Path, seed: int, several: bool) -> None:
    """The paper's Table 4 protocol: a blind A/B sheet of n test contexts for the first evaluated model against
    each other one, in out/<first>-vs-<other>[/seed-S]/ (score them with `cldg human-eval score`)."""
    from cldg.tools.human_eval import export_sheets

    def model(a: Artifact) -> str:
        return str(a.manifest.get("config", {}).get("model", a.fingerprint)).replace("/", "_")

    for other in evals[1:]:
        sub = out / f"{model(evals[0])}-vs-{model(other)}" / (f"seed-{seed}" if several else "")
        try:
            export_sheets(evals[0].path, other.path, n, sub, seed)
        except CldgError as exc:  # sheets of an earlier run stay: they may be with annotators; the run goes on
            console.print(f"[yellow]warning:[/] human-eval sheets not written: {exc}", highlight=False, soft_wrap=True)


def _print_summary(results: list[StepResult], total: float) -> None:
    table = Table(title=f"cldg run: {len(results)} steps in {total:,.0f} s")
    for col in ("stage", "artifact", "status", "threads", "started (s)", "time (s)"):
        table.add_column(col)
    for r in sorted(results, key=lambda r: r.started):
        status = "[dim]skipped (complete)[/]" if r.skipped else "[green]built[/]"
        table.add_row(r.label, f"{r.artifact.stage}/{r.artifact.fingerprint[:12]}", status, str(r.threads or ""),
                      f"{r.started:,.1f}", f"{r.seconds:,.1f}")
    console.print(table)


# -- the paper's Table 5 and its group-size study ---------------------------------------------------------

def ablation_variants(base_k: int, ks: list[int], names: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(row label, contrastive-train overrides): the full model, each ablation, then k = 1..n."""
    rows = [(f"full (k = {base_k})", {})]
    rows += [(name.replace("_", " "), {name: True}) for name in names]
    rows += [(f"k = {k}", {"k": k}) for k in ks if k != base_k]
    return rows


def run_ablation(config: Path, workdir: Path | None = None, force: bool = False, device: str | None = None,
                 seeds: list[int] | None = None, ks: list[int] | None = None, parallel: bool | None = None) -> dict:
    """Every Table 5 ablation and every group size, each trained from the same reference, samples and
    reference cache and evaluated the same way; writes ablation/{ablation.json,ablation.md,ablation-k.png} in the
    reports folder (the workdir unless `[run] reports`) and returns the table."""
    from cldg.reports import ablation_report
    from cldg.runtime import configure_runtime, offline_environment

    offline_environment()
    doc = load_toml(config)
    check_config_doc(doc, str(config))
    table = doc.get("ablate", {})
    ks = ks or _int_list(table.get("ks", [1, 2, 3, 4, 5]), f"{config} [ablate] ks", low=1)
    names = table.get("variants", list(ABLATIONS))
    if not isinstance(names, list) or not set(names) <= set(ABLATIONS):
        raise CldgError(f"{config} [ablate] variants: expected names among {', '.join(ABLATIONS)}, got {names!r}")
    base_k = doc.get("contrastive_train", {}).get("k", 3)
    mine_k = max([*ks, base_k, doc.get("mine_samples", {}).get("k", 3)])
    plan = load_plan(config, workdir, force, device, seeds, {"mine_samples": {"k": mine_k}}, parallel)
    common = plan.common
    threads = configure_runtime(common.deterministic, common.torch_threads)
    # one after the other, but on the threads `cldg run` gives each stage: the same floats, the same artifacts
    stage_threads = plan_threads(plan, threads)

    def run_step(step: Step, run_common: CommonOptions, run_built: dict[str, Artifact], cfg: Any = None) -> Artifact:
        return execute_step_on(stage_threads.get(step.table, threads), step, run_common, run_built, cfg)[0]

    by_table = {s.table: s for s in plan.steps}
    missing = {"pretrain", "mine_samples", "contrastive_train", "evaluate"} - set(by_table)
    if missing:
        raise CldgError(f"{config}: an ablation needs the stages {sorted(missing)} (remove them from [run] skip)")
    evaluate = next(s for s in plan.steps if s.table == "evaluate")
    variants = ablation_variants(base_k, ks, names)
    before = [s for s in plan.steps if s.table not in ("contrastive_train", "evaluate")]

    runs: dict[str, dict[int, Path]] = {label: {} for label, _ in variants}
    reference_runs: dict[int, Path] = {}
    t0 = time.time()
    built: dict[str, Artifact] = {}
    for step in before:
        if step.table not in plan.seed_stages:
            console.rule(f"[bold]{step.label}")
            run_step(step, common, built)
    for seed in plan.seeds:
        seed_common = dataclasses.replace(common, seed=seed)
        seed_built = dict(built)
        for step in before:
            if step.table in plan.seed_stages:
                console.rule(f"[bold]{step.label} \\[seed {seed}]")
                run_step(step, seed_common, seed_built)
        ref_eval = dataclasses.replace(evaluate.cfg, model="reference")
        console.rule(f"[bold]evaluate (reference) \\[seed {seed}]")
        reference_runs[seed] = run_step(evaluate, seed_common, seed_built, ref_eval).path
        for label, overrides in variants:
            console.rule(f"[bold]ablation: {escape(label)} \\[seed {seed}]")
            step = by_table["contrastive_train"]
            run_step(step, seed_common, seed_built, dataclasses.replace(step.cfg, **overrides))
            runs[label][seed] = run_step(evaluate, seed_common, seed_built,
                                             dataclasses.replace(evaluate.cfg, model="contrastive")).path
    return ablation_report(runs, reference_runs, variants, base_k, plan.reports / "ablation",
                           seconds=round(time.time() - t0, 1))
