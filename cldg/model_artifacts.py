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
    from cldg.approaches import model_stages

    if str(spec) in model_stages():
        return store.resolve_input(str(spec), None, MODEL_SCHEMA, "--model")
    art = Artifact.load(Path(spec))
    if art.stage not in model_stages():
        raise MissingArtifactError(f"{spec}: a '{art.stage}' artifact is not a model")
    return art


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
