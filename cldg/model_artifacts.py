"""Finding a trained model's artifact: by stage name or directory, with the prepare artifact (tokenizer, vectors)
and the truncation limits it was trained with. The models library itself knows nothing of the artifact store."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cldg.artifacts import Artifact, ArtifactStore
from cldg.errors import MissingArtifactError

MODEL_SCHEMA = 1


def resolve_model(store: ArtifactStore, spec: str | Path) -> Artifact:
    """A model artifact's name ('reference', 'contrastive': what an approach makes) -> the latest of that stage;
    anything else is an artifact directory."""
    from cldg.approaches import model_name_stages, model_stages

    stages = model_name_stages()
    if str(spec) in stages:
        art = store.resolve_input(stages[str(spec)], None, MODEL_SCHEMA, "--model")
    else:
        if not Path(spec).exists():  # a mistyped name reads better as one than as a missing directory
            raise MissingArtifactError(f"model {spec!r}: not a model name ({', '.join(sorted(stages))}) nor a model "
                                       "artifact directory")
        if is_in_progress(spec):
            raise MissingArtifactError(f"{spec}: a training still in progress - `cldg evaluate --model {spec}` scores "
                                       "its best checkpoint so far; here it can be used once it ends")
        art = Artifact.load(Path(spec))
        if art.stage not in model_stages():
            raise MissingArtifactError(f"{spec}: a '{art.stage}' artifact is not a model")
    behind = revision_behind(art)
    if behind:
        from cldg.progress import console

        console.print(f"warning: {art.path}: {behind}", style="yellow", highlight=False, soft_wrap=True)
    return art


def revision_behind(art: Artifact) -> str | None:
    """Why a model artifact was trained by code a fix has changed since (its approach's or its model's revision,
    cldg.approaches / cldg.choices.MODEL_REVISIONS, is above the one it records), or None. A new run retrains
    it (the revision is in the fingerprint); `latest` points at the old one until then."""
    from cldg.approaches import approaches
    from cldg.choices import MODEL_REVISIONS

    cfg = art.config
    for a in approaches():
        if a.makes == art.stage and a.generic and a.revision > int(cfg.get("revision", 1)):
            return (f"trained before revision {a.revision} of {a.name} (a fix changed its training) - "
                    f"`cldg {a.command}` retrains it")
    model = cfg.get("model")
    if isinstance(model, str) and MODEL_REVISIONS.get(model, 1) > int(cfg.get("model_revision", 1)):
        return (f"a {model} trained before revision {MODEL_REVISIONS[model]} of that model (a fix changed it) - "
                "rerun the stage that made it to retrain it")
    return None


def model_prepare(art: Artifact) -> Artifact:
    """The prepare artifact (tokenizer, vectors) the model was trained on."""
    return Artifact.load(Path(art.manifest["inputs"]["prepare"]["path"]))


def model_limits(art: Artifact):
    """The truncation limits the model was trained with (a model trained from the reference without limits of its
    own, e.g. contrastive or mmi, inherits the reference's)."""
    from cldg.data.batching import Limits

    cfg = art.config
    if "max_context_turns" not in cfg:
        cfg = Artifact.load(Path(art.manifest["inputs"]["reference"]["path"])).config
    return Limits.from_config(cfg)


def is_in_progress(spec) -> bool:
    """Is `spec` the .partial directory of a run that has not ended?"""
    return Path(spec).name.endswith(".partial") and Path(spec).is_dir()


@dataclass
class CheckpointInProgress:
    """The best checkpoint so far of a training that is still running (or was stopped and not resumed): what
    `cldg evaluate --model WORKDIR/STAGE/FP.partial` scores. `run` reads as the artifact will (stage, config,
    inputs, from .partial/.run.json); its path is the .partial directory."""
    run: Artifact
    meta: dict            # resume/model.json, and
    weights: bytes        # best.safetensors, as read once (the training may write newer ones, or end, meanwhile)
    sha256: str
    step: int             # the check that made it
    criterion: float

    @property
    def label(self) -> str:
        return f"{self.run.stage}@{self.step}"


def load_in_progress(partial: Path, stages: tuple[str, ...]) -> CheckpointInProgress:
    """The best checkpoint of the training in `partial`; one line naming what is missing otherwise."""
    import hashlib
    import json
    import time

    from cldg.artifacts import RUN_RECORD

    partial = Path(partial)
    resume = partial / "resume"
    try:
        record = json.loads((partial / RUN_RECORD).read_text())
        run = Artifact(str(record["stage"]), str(record["fingerprint"]), partial.resolve(), record)
    except FileNotFoundError:
        raise MissingArtifactError(f"{partial}: no {RUN_RECORD} (started by an older cldg) - rerun its stage, which "
                                   "resumes where it stopped and records it, then evaluate it") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MissingArtifactError(f"{partial / RUN_RECORD}: unreadable ({type(exc).__name__}: {exc})") from None
    if run.stage not in stages:
        raise MissingArtifactError(f"{partial}: a '{run.stage}' run in progress, not a model's")
    try:
        meta = json.loads((resume / "model.json").read_text())
    except FileNotFoundError:
        raise MissingArtifactError(f"{partial}: no scorable checkpoint - none yet (one comes with the first "
                                   "validation), its checkpoints are not the model the stage saves, or it was "
                                   "started by an older cldg; evaluate it when it ends") from None
    except (OSError, ValueError) as exc:
        raise MissingArtifactError(f"{resume / 'model.json'}: unreadable ({type(exc).__name__}: {exc})") from None
    for _ in range(5):  # best.safetensors and best.json are two files: read them until they agree
        try:
            weights = (resume / "best.safetensors").read_bytes()
            best = json.loads((resume / "best.json").read_text())
        except FileNotFoundError:
            raise MissingArtifactError(f"{partial}: no best checkpoint yet (it comes with the first validation)") \
                from None
        except (OSError, ValueError) as exc:
            raise MissingArtifactError(f"{resume / 'best.json'}: unreadable ({type(exc).__name__}: {exc})") from None
        digest = hashlib.sha256(weights).hexdigest()
        if best.get("sha256") == digest:
            return CheckpointInProgress(run, meta, weights, digest, int(best["step"]), float(best["criterion"]))
        time.sleep(1)  # the training is writing a new best between the two reads
    raise MissingArtifactError(f"{partial}: its best checkpoint and {resume / 'best.json'} disagree - if the "
                               "training is not running, rerun its stage once to rewrite them")
