"""The `cldg` command: one subcommand per stage, plus run / status / compare / chat / human-eval.

Stage subcommands are generated from each stage's config dataclass (`cldg/stages/<stage>.py:Config`),
so an option is declared once and means the same on the command line and in a TOML table. The CLI
only parses options and calls the stage's `run(cfg, common)`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import os
import signal
import threading
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.markup import escape

from cldg import __version__
from cldg.config import CommonOptions, config_from_table, load_toml, options_from, options_like
from cldg.decoding.options import DecodingOptions
from cldg.errors import CldgError
from cldg.progress import console
from cldg.stages import STAGES as STAGE_REGISTRY

def _keep_option_names_whole() -> None:
    """In --help, put an option's negative form under it ("--no-positive-group" over "--with-positive-group")
    instead of in a column of its own: with both columns at 80 characters rich cut 16 names to
    "--refresh-refere…", unusable. The name column is never wrapped; the help text wraps instead, and folds
    what has no space to wrap at."""
    import typer.rich_utils
    from rich.table import Table
    from rich.text import Text

    class OptionsTable(Table):
        def add_row(self, *cells, **kwargs) -> None:
            cells, at = list(cells), len(cells) - 6  # [required marker], long, short, negative long, short, type, help
            if at >= 0 and isinstance(cells[at], Text) and isinstance(cells[at + 2], Text) and cells[at + 2].plain:
                cells[at], cells[at + 2] = Text.assemble(cells[at], "\n", cells[at + 2]), Text("")
            for part in getattr(cells[-1], "renderables", ()) if at >= 0 else ():  # the help: text, default
                if isinstance(part, Text):
                    part.overflow = "fold"  # a long default without spaces ("0,0.1,...,1") breaks, not "…"
            super().add_row(*cells, **kwargs)
            if at >= 0:
                self.columns[at].no_wrap = True

    typer.rich_utils.Table = OptionsTable


_keep_option_names_whole()

app = typer.Typer(
    name="cldg",
    help="Group-wise contrastive learning for neural dialogue generation (Cai et al., 2020).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)



def _die(message: str, code: int) -> typing.NoReturn:
    console.quiet = False  # errors always show
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler preempting the job, torchrun stopping its ranks): handled as Ctrl-C is, so a
    long stage saves where it is (a training its step, mining its chunks) and the rerun resumes there."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def _die_with_traceback_on_request(message: str, code: int) -> typing.NoReturn:
    """_die, and the traceback of the exception being handled with CLDG_DEBUG=1."""
    if os.environ.get("CLDG_DEBUG"):
        console.print_exception()
    _die(message, code)


def raise_internal(exc: BaseException) -> typing.NoReturn:
    """An internal error: one line, the traceback with CLDG_DEBUG=1."""
    _die_with_traceback_on_request(f"internal error: {type(exc).__name__}: {exc} (set CLDG_DEBUG=1 for the traceback)", 1)


def guarded(fn: Callable[[], Any], quiet: bool = False) -> Any:
    """Run fn; turn cldg errors into one line + exit 2, Ctrl-C into exit 130 and SIGTERM into exit 143 (both
    after the stage has saved its progress), crashes into exit 1.
    quiet: nothing but errors on the console while fn runs (--json: stdout carries the JSON)."""
    from cldg.progress import results

    was_quiet = console.quiet, results.quiet
    console.quiet = results.quiet = quiet
    previous = None
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return fn()
    except CldgError as exc:
        _die(str(exc), exc.exit_code)
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        console.print(f"[yellow]{what}[/] - rerun the same command to resume where it stopped")
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130)
    except (typer.Exit, SystemExit):
        raise
    except BrokenPipeError:  # `cldg status --json | head -1`: the reader has gone, nothing to say to it
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # so the interpreter's final flush does not fail again
        raise typer.Exit(141) from None
    except OSError as exc:
        if exc.filename is None:
            raise_internal(exc)
        # a path the user gave (or the workdir) that cannot be read or written: one line naming it
        _die_with_traceback_on_request(f"{exc.filename}: {exc.strerror or exc}", 2)
    except Exception as exc:  # an internal error: one line, traceback on request
        raise_internal(exc)
    finally:
        console.quiet, results.quiet = was_quiet
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _typer_param(f: dataclasses.Field, tp: Any, parse_choices: bool = True) -> inspect.Parameter:
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    # help is rich markup (rich_markup_mode): "[run]" or "cuda[:N]" must show as written, not vanish as a tag
    kwargs: dict[str, Any] = {"help": escape(meta.get("help", "")), "show_default": True}
    if meta.get("choices"):
        choices = tuple(meta["choices"])
        kwargs["metavar"] = "|".join(choices)
    if meta.get("choices") and parse_choices:

        def parse_choice(value: str, choices=choices, flag=flag) -> str:
            if value not in choices:
                raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
            return value

        kwargs["parser"] = parse_choice
    args = typing.get_args(tp)
    if args and type(None) in args:
        tp = Optional[[a for a in args if a is not type(None)][0]]
    if tp is bool:
        # --x/--no-x; a flag already named --no-x gets --with-x as its opposite (not --no-no-x)
        negative = "--with-" + flag[5:] if flag.startswith("--no-") else f"--no-{flag[2:]}"
        decl = [f"{flag}/{negative}"]
    else:
        decl = [flag]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                             annotation=Annotated[tp, typer.Option(*decl, **kwargs)], default=default)


def load_common_and_config(ctx: typer.Context, config_cls: type | None, table: str | None,
                           values: dict[str, Any]) -> tuple[CommonOptions, Any]:
    """Merge defaults < TOML (top level for common keys, [table] for the stage) < command line."""
    def given(name: str) -> bool:
        # typer may vendor its own click, so compare the source by name
        src = ctx.get_parameter_source(name)
        return src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")

    common_names = [f.name for f in dataclasses.fields(CommonOptions)]
    doc: dict[str, Any] = load_toml(values["config"]) if values.get("config") else {}
    where = str(values.get("config"))
    if doc:  # a misspelt table would otherwise be ignored without a word
        from cldg.pipeline import check_config_doc

        check_config_doc(doc, where)
    top = {k: v for k, v in doc.items() if k in common_names}
    common_cli = {k: values[k] for k in common_names if k in values and given(k)}
    common = config_from_table(CommonOptions, {k: v for k, v in top.items() if k != "config"}, where, common_cli)
    common = dataclasses.replace(common, config=values.get("config"))
    cfg = None
    if config_cls is not None:
        stage_table = doc.get(table, {}) if table else {}
        if not isinstance(stage_table, dict):
            raise CldgError(f"{where}: [{table}] must be a table")
        stage_names = [f.name for f in dataclasses.fields(config_cls)]
        stage_cli = {k: values[k] for k in stage_names if given(k)}
        cfg = config_from_table(config_cls, stage_table, f"{where} [{table}]", stage_cli)
    return common, cfg


def add_stage_command(stage) -> None:
    from cldg.stages import stage_module

    name, module_name, table = stage.command, stage.module, stage.table
    try:
        module = stage_module(stage)
    except ModuleNotFoundError as exc:  # a stage that has not landed yet
        if exc.name == f"cldg.stages.{module_name}":
            return
        raise
    config_cls = module.Config
    hints = {}
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    hints["ctx"] = typer.Context
    for cls in (config_cls, CommonOptions):
        type_hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            p = _typer_param(f, type_hints[f.name])
            params.append(p)
            hints[f.name] = p.annotation

    # A stage that declares JSON_OUTPUT (a file of its artifact) also takes --json: print that file only.
    json_output = getattr(module, "JSON_OUTPUT", None)
    if json_output:
        params.append(inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=JsonOpt, default=False))
        hints["as_json"] = JsonOpt

    def command(ctx: typer.Context, **values: Any) -> None:
        as_json = values.pop("as_json", False)

        def go():
            from cldg.runtime import configure_runtime, offline_environment

            offline_environment()
            common, cfg = load_common_and_config(ctx, config_cls, table, values)
            configure_runtime(common.deterministic, common.torch_threads)
            artifact = module.run(cfg, common)
            if as_json:
                print(artifact.file(json_output).read_text())
            return artifact

        guarded(go, quiet=as_json)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = hints
    command.__doc__ = (module.__doc__ or "").strip()
    app.command(name, help=escape(command.__doc__.split("\n\n")[0]) if command.__doc__ else None,
                epilog=escape(f"TOML table: [{table}]"))(command)


WorkdirOpt = Annotated[Path, typer.Option("--workdir", help="Directory that holds every artifact.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]

# (subcommand, module under cldg.stages, TOML table) in pipeline order: a view of the stage registry
STAGES: list[tuple[str, str, str]] = [(s.command, s.module, s.table) for s in STAGE_REGISTRY]
for _stage in STAGE_REGISTRY:
    add_stage_command(_stage)


@app.command("status")
def status_command(workdir: Annotated[Optional[Path], typer.Argument(help="Workdir (default ./cldg-work).")] = None,
                   workdir_opt: Annotated[Optional[Path], typer.Option("--workdir", help="Same as the argument.")] = None,
                   as_json: JsonOpt = False,
                   verify: Annotated[bool, typer.Option("--verify", help="Hash every file of every complete artifact "
                                                        "and compare with its manifest; exit 2 if any differs.")] = False,
                   long: Annotated[bool, typer.Option("--long", help="Full fingerprints, paths, row counts, files and "
                                                      "sizes.")] = False) -> None:
    """Show every stage's artifacts (complete and in progress), one row each; --verify checks their sha256."""
    from cldg.status import show_status

    guarded(lambda: show_status(workdir or workdir_opt or Path("cldg-work"), as_json, verify=verify, long=long),
            quiet=as_json)


@app.command("run")
def run_command(config: Annotated[Path, typer.Argument(help="Pipeline TOML config (see examples/).")],
                workdir: Annotated[Optional[Path], typer.Option(help="Override the config's workdir.")] = None,
                force: Annotated[bool, typer.Option(help="Rerun every stage.")] = False,
                device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda")] = None,
                seeds: Annotated[Optional[str], typer.Option(
                    help="Comma-separated seeds, e.g. 13,14,15: rerun the seed-dependent stages once per seed "
                         "and report mean ± sd and per-seed CIs (overrides \\[run] seeds).")] = None,
                parallel: Annotated[Optional[bool], typer.Option(
                    "--parallel/--no-parallel",
                    help="Train the matcher and mine in a second process while the MLE reference trains, each on "
                         "half the threads (overrides \\[run] parallel; README, Performance).")] = None) -> None:
    """Run the whole pipeline from one TOML file, skipping what is built and resuming what was interrupted."""
    from cldg.pipeline import parse_seeds, run_pipeline

    guarded(lambda: run_pipeline(config, workdir=workdir, force=force, device=device,
                                 seeds=parse_seeds(seeds) if seeds else None, parallel=parallel))


@app.command("ablate")
def ablate_command(config: Annotated[Path, typer.Argument(help="Pipeline TOML config (see examples/).")],
                   workdir: Annotated[Optional[Path], typer.Option(help="Override the config's workdir.")] = None,
                   force: Annotated[bool, typer.Option(help="Rerun every stage.")] = False,
                   device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda")] = None,
                   seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds (default: \\[run] seeds, "
                                                                     "else the config's seed).")] = None,
                   ks: Annotated[Optional[str], typer.Option(help="Group sizes to study, e.g. 1,2,3,4,5 "
                                                                  "(default: \\[ablate] ks, else 1..5).")] = None,
                   parallel: Annotated[Optional[bool], typer.Option(
                       "--parallel/--no-parallel",
                       help="Give each stage the threads `cldg run --parallel` gives it, so that the run's artifacts "
                            "are the ablation's (overrides \\[run] parallel).")] = None) -> None:
    """The paper's Table 5: every ablation and every group size k from one reference, samples and reference
    cache, evaluated the same way; writes WORKDIR/ablation/ablation.{json,md} and ablation-k.png."""
    from cldg.pipeline import parse_seeds, run_ablation

    def go():
        k_list = None
        if ks:
            k_list = parse_seeds(ks, "--ks", "group sizes", "1,2,3,4,5")
            if min(k_list) < 1:
                raise CldgError(f"--ks {ks!r}: group sizes must be at least 1")
        run_ablation(config, workdir=workdir, force=force, device=device,
                     seeds=parse_seeds(seeds) if seeds else None, ks=k_list, parallel=parallel)

    guarded(go)


@app.command("approaches")
def approaches_command(as_json: JsonOpt = False) -> None:
    """List the learning approaches a model can be trained with: the command, its inputs and the model it makes."""
    from cldg.approaches import approaches

    def go():
        rows = [{"name": a.name, "command": f"cldg {a.command}", "needs": list(a.needs), "makes": a.makes,
                 "recipe": a.recipe, "description": a.description} for a in approaches()]
        if as_json:
            import json

            print(json.dumps(rows, indent=2))
            return
        # one block per approach, not a five-column table: an 80-column terminal left the description a dozen
        # characters a line
        from rich.padding import Padding

        from cldg.progress import results

        results.print("[bold]Learning approaches[/bold] (cldg/approaches/)")
        for r in rows:
            results.print(f"\n[bold]{r['name']}[/bold]  {r['command']}  [dim](needs {', '.join(r['needs'])}; "
                          f"makes {r['makes']})[/dim]")
            results.print(Padding(r["description"], (0, 0, 0, 2)))

    guarded(go, quiet=as_json)


@app.command("inspect-samples")
def inspect_samples_command(
        workdir: WorkdirOpt = Path("cldg-work"),
        samples: Annotated[Optional[Path], typer.Option(help="Samples artifact dir (default: latest).")] = None,
        n: Annotated[int, typer.Option("-n", "--n", help="How many pairs to show.")] = 3,
        seed: Annotated[int, typer.Option(help="Which pairs (random, seeded).")] = 0,
        as_json: JsonOpt = False) -> None:
    """Show a few mined pairs with their positive and negative groups and scores."""
    from cldg.tools.inspect_samples import inspect_samples

    guarded(lambda: inspect_samples(workdir, samples, n, seed, as_json))


@app.command("compare")
def compare_command(
        runs: Annotated[list[Path], typer.Argument(help="Evaluate artifact dirs to put side by side, or approaches (mle, "
                                                   "contrastive: the newest evaluation of each one's latest model).")],
        workdir: WorkdirOpt = Path("cldg-work"),
        out: Annotated[Optional[Path], typer.Option(help="Write comparison.json, comparison.md and comparison.png here.")] = None,
        as_json: JsonOpt = False) -> None:
    """Put several evaluate runs side by side, best per metric marked, with bootstrap confidence intervals."""
    from cldg.tools.compare import compare_runs

    def go():
        result = compare_runs(runs, workdir, out, as_json)
        if as_json:
            import json

            print(json.dumps(result, indent=2, default=str))

    guarded(go, quiet=as_json)


human_eval_app = typer.Typer(help="Blind A/B human evaluation sheets (the paper's Table 4).", no_args_is_help=True)
app.add_typer(human_eval_app, name="human-eval")


@human_eval_app.command("export")
def human_eval_export(
        run_a: Annotated[Path, typer.Argument(help="Evaluate artifact of system A.")],
        run_b: Annotated[Path, typer.Argument(help="Evaluate artifact of system B.")],
        out: Annotated[Path, typer.Option(help="Folder for the sheets and the key.")] = Path("human-eval"),
        n: Annotated[int, typer.Option("-n", "--n", help="How many test contexts.")] = 100,
        seed: Annotated[int, typer.Option(help="Sampling and order seed.")] = 13,
        force: Annotated[bool, typer.Option(help="Replace a sheet and key already in --out.")] = False) -> None:
    """Write blind A/B sheets (CSV) for N random test contexts; the order key is stored apart."""
    from cldg.tools.human_eval import export_sheets

    guarded(lambda: export_sheets(run_a, run_b, n, out, seed, force))


@human_eval_app.command("score")
def human_eval_score(
        sheets: Annotated[list[Path], typer.Argument(help="Filled sheets, one per annotator.")],
        key: Annotated[Path, typer.Option(help="The key file written by export.")],
        as_json: JsonOpt = False) -> None:
    """Score filled sheets: win / loss / tie per annotator and overall, and Cohen's kappa."""
    from cldg.tools.human_eval import score_sheets

    def go():
        result = score_sheets(sheets, key, as_json)
        if as_json:
            import json

            print(json.dumps(result, indent=2, default=str))

    guarded(go, quiet=as_json)


def with_options(cls: type, into: str):
    """A command that also takes every field of the options dataclass `cls` as an option (declared once, in
    `cls`) and receives them together as one `cls` in its parameter `into`. The command checks their values
    itself (a bad choice is then one `error:` line, as every other bad value)."""
    def wrap(fn):
        own = [p for p in inspect.signature(fn).parameters.values() if p.name != into]
        hints = typing.get_type_hints(fn, include_extras=True)
        cls_hints = typing.get_type_hints(cls)
        extra = [_typer_param(f, cls_hints[f.name], parse_choices=False) for f in dataclasses.fields(cls)]
        names = [f.name for f in dataclasses.fields(cls)]

        def command(**values: Any) -> Any:
            return fn(**{k: v for k, v in values.items() if k not in names},
                      **{into: cls(**{k: values[k] for k in names})})

        command.__signature__ = inspect.Signature([p.replace(annotation=hints[p.name]) for p in own] + extra)
        command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
        command.__doc__, command.__name__ = fn.__doc__, fn.__name__
        return command
    return wrap


# chat answers one person at a time: beam search with 3-gram blocking reads better than evaluate's greedy default
ChatDecodingOptions = options_like(DecodingOptions, decoding="beam", no_repeat_ngram=3)


@app.command("chat")
@with_options(ChatDecodingOptions, into="decoding")
def chat_command(
        model: Annotated[str, typer.Argument(help="reference, contrastive, another approach's model, a model "
                                                  "artifact directory, or hf:PATH (a local transformers directory).")
                         ] = "contrastive",
        workdir: WorkdirOpt = Path("cldg-work"),
        reference: Annotated[Optional[str], typer.Option(help="Show this model's answer beside it (e.g. reference).")] = None,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
        seed: Annotated[int, typer.Option(help="Sampling seed.")] = 13,
        decoding: Any = None) -> None:
    """Talk to a trained model in the terminal (history kept as context)."""
    from cldg.chat import chat_session

    def go():
        options = options_from(DecodingOptions, decoding)
        if options.problems():
            raise CldgError(f"chat: {options.problems()[0]}")
        chat_session(model, workdir, reference, options.decode_config(), device, seed)

    guarded(go)


@app.command("version")
def version_command() -> None:
    """Print the cldg version."""
    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
