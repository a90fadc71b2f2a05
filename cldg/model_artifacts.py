"""Finding a trained model's artifact: by stage name or directory, with the prepare artifact (tokenizer, vectors)
and the truncation limits it was trained with. The models library itself knows nothing of the artifact store."""
from __future__ import annotations

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
