"""`cldg inspect-samples`: a few training pairs with their mined positive and negative groups, their texts
and matching scores, to check by eye what mine-samples produced. Not a stage: it reads, never writes."""
from __future__ import annotations

from pathlib import Path

from cldg.artifacts import ArtifactStore
from cldg.errors import CldgError
from cldg.stages.mine import SCHEMA


def inspect_samples(workdir: Path, samples_dir: Path | None, n: int, seed: int, as_json: bool) -> dict:
    """Print a few pairs with their positive and negative groups (and scores)."""
    import json
    import random

    from rich.table import Table

    from cldg.artifacts import Artifact
    from cldg.data.pairs import read_pairs
    from cldg.progress import results
    from cldg.retrieval.mining import read_samples

    if n < 1:
        raise CldgError(f"-n {n}: show at least one pair")
    store = ArtifactStore(workdir)
    samples = store.resolve_input("samples", samples_dir, SCHEMA, "--samples")
    prepared = Artifact.load(Path(samples.manifest["inputs"]["prepare"]["path"]))
    text = {}
    for split in ("train", "valid"):
        t = read_pairs(prepared.file(f"pairs-{split}.parquet"))
        text.update({p: (c, r) for p, c, r in zip(t.pair_id, t.context, t.response)})
    cols = read_samples(samples.path)
    by_pair: dict[int, list[int]] = {}
    for i, p in enumerate(cols["pair_id"]):
        by_pair.setdefault(p, []).append(i)
    chosen = random.Random(seed).sample(sorted(by_pair), min(n, len(by_pair)))
    report = []
    for pid in chosen:
        ctx, resp = text[pid]
        entry = {"pair_id": pid, "context": ctx, "response": resp, "groups": []}
        for i in sorted(by_pair[pid], key=lambda i: (cols["side"][i], cols["polarity"][i] != "pos", cols["rank"][i])):
            cand_ctx, cand_resp = text[cols["cand_pair_id"][i]]
            shown = cand_resp if cols["side"][i] == "response" else " | ".join(cand_ctx)
            entry["groups"].append({"side": cols["side"][i], "polarity": cols["polarity"][i], "rank": cols["rank"][i],
                                    "text": shown, "matcher_prob": round(float(cols["matcher_prob"][i]), 4),
                                    "weight": round(float(cols["weight"][i]), 4)})
        report.append(entry)
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return {"pairs": report}
    for e in report:
        table = Table(title=f"pair {e['pair_id']}", show_lines=False, expand=True)
        table.add_column("group", no_wrap=True)
        table.add_column("text")
        table.add_column("prob", justify="right")
        table.add_column("weight", justify="right")
        table.add_row("[bold]context[/]", " | ".join(e["context"]), "", "")
        table.add_row("[bold]response[/]", e["response"], "", "")
        for g in e["groups"]:
            label = ("r" if g["side"] == "response" else "c") + ("+" if g["polarity"] == "pos" else "-")
            style = "green" if g["polarity"] == "pos" else "red"
            table.add_row(f"[{style}]{label}{g['rank'] + 1}[/]", g["text"], f"{g['matcher_prob']:.3f}", f"{g['weight']:+.3f}")
        results.print(table)
    return {"pairs": report}
