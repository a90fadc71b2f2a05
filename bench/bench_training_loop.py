"""cldg's Trainer (MLE recipe) against a plain PyTorch loop of the same model, batches and seed.

    .venv/bin/python bench/bench_training_loop.py [--prepare-dir WORKDIR/prepare/FP] [--configs seq2seq:demo,seq2seq:paper]
        [--steps 8] [--repeats 3] [--threads 1]

For each model:size, two ways of training the same freshly seeded model on the same first `--steps`
batches of an epoch (MLERecipe.batches: length-bucketed, the seed's order):
  trainer   Trainer(model, TrainOptions(max_steps=steps), run_dir, cpu, MLERecipe(...)).fit(): the
            stage's loop, with its progress bar, train log, NaN check, and the validation + checkpoint
            it always does after the last step;
  plain     for batch in recipe.batches(0, 0): zero_grad, forward, nll_loss, backward, clip, Adam step.
The two take turns (trainer first on even repeats, plain first on odd ones), `--repeats` times after
one untimed warm-up pair; the medians are reported. The clock is the process's CPU time (all threads:
the progress bar's refresh thread counts against the trainer), since wall time on a shared machine
mostly measures the neighbours; wall figures are given beside it. The trainer's rate is given twice:
over its whole fit(), and over its training steps alone (fit minus the final validation and checkpoint,
which a real run pays once per `1/evals_per_epoch` epoch, not every few steps). Target: steps-only
ratio >= 0.9. The warm-up pair also checks the results: the per-step losses and the final weights of
the two must be equal (bit for bit), and every timed repeat's final weights too.
Without --prepare-dir the pairs are random ids with chitchat-like lengths. Prints JSON.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# demo: examples/chitchat-demo.toml's pretrain table; paper: the registry defaults (2 x 256 GRUs) at batch 128
SIZES = {
    "demo": {"model": {"embedding_dim": 64, "hidden_size": 128, "num_layers": 1}, "batch_size": 64, "vocab": 4000},
    "paper": {"model": {}, "batch_size": 128, "vocab": 20000},
}


def load_data(args, size: dict, n_train: int):
    """(train pairs, valid pairs, vocab size): a prepare artifact's, else synthetic."""
    if args.prepare_dir:
        from bench_pretrain import load_pairs

        from cldg.data.batching import EncodedPairs, Limits
        from cldg.data.pairs import read_pairs
        from cldg.text.tokenizer import DialogueTokenizer

        train, vocab = load_pairs(args.prepare_dir, n_train)
        tok = DialogueTokenizer.load(os.path.join(args.prepare_dir, "tokenizer.json"))
        v = read_pairs(os.path.join(args.prepare_dir, "pairs-valid.parquet"))
        n = min(args.valid_pairs, len(v))
        return train, EncodedPairs(tok, list(v.context[:n]), list(v.response[:n]), Limits()), vocab
    from bench_pretrain import synthetic_pairs  # bench/ is on sys.path when a bench runs as a script

    vocab = size["vocab"]
    return synthetic_pairs(n_train, vocab, 0), synthetic_pairs(args.valid_pairs, vocab, 1), vocab


def fresh_model(name: str, size: dict, vocab: int, seed: int):
    import torch

    from cldg.models import build_model

    torch.manual_seed(seed)
    return build_model(name, vocab, **size["model"])


def run_trainer(name, size, vocab, train, valid, args, record_losses=False):
    """One Trainer fit of --steps steps in a fresh run dir: (cpu s, wall s, {"_check", "_save": cpu s}, model, losses)."""
    import torch

    from cldg.training.options import TrainOptions
    from cldg.training.recipes.mle import MLERecipe
    from cldg.training.trainer import Trainer

    device = torch.device("cpu")
    model = fresh_model(name, size, vocab, args.seed)
    recipe = MLERecipe(train, valid, size["batch_size"], args.seed, device)
    losses = []
    if record_losses:  # the untimed warm-up only: keep each step's loss
        loss_fn = recipe.loss

        def recording(m, batch, step):
            loss, info = loss_fn(m, batch, step)
            losses.append(loss.detach().clone())
            return loss, info

        recipe.loss = recording
    opts = TrainOptions(lr=args.lr, batch_size=size["batch_size"], epochs=1, max_steps=args.steps, grad_clip=5.0)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as run_dir:
        trainer = Trainer(model, opts, run_dir, device, recipe)
        final_cpu = {"_check": 0.0, "_save": 0.0}  # the validation (+ best weights) and checkpoint after the last step
        for attr in final_cpu:
            method = getattr(trainer, attr)

            def timed(*a, _method=method, _attr=attr, **kw):
                c0 = time.process_time()
                try:
                    return _method(*a, **kw)
                finally:
                    final_cpu[_attr] += time.process_time() - c0

            setattr(trainer, attr, timed)
        torch.manual_seed(args.seed + 1)  # dropout draws start from the same state in both loops
        w0, c0 = time.perf_counter(), time.process_time()
        summary = trainer.fit(description="bench trainer")
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    assert summary["steps"] == args.steps, summary
    return cpu, wall, final_cpu, model, losses


def run_plain(name, size, vocab, train, valid, args, record_losses=False):
    """The same steps as a plain loop: (cpu s, wall s, response tokens, model, losses)."""
    import torch

    from cldg.text.tokenizer import PAD
    from cldg.training.losses import nll_loss
    from cldg.training.recipes.mle import MLERecipe

    device = torch.device("cpu")
    model = fresh_model(name, size, vocab, args.seed).to(device)
    recipe = MLERecipe(train, valid, size["batch_size"], args.seed, device)  # for its batches only
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses, tokens = [], 0
    torch.manual_seed(args.seed + 1)
    model.train()
    w0, c0 = time.perf_counter(), time.process_time()
    for batch in itertools.islice(recipe.batches(0, 0), args.steps):
        batch = batch.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss, n_tokens = nll_loss(model(batch), batch.response_out, PAD)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        tokens += n_tokens
        if record_losses:
            losses.append(loss.detach().clone())
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return cpu, wall, tokens, model, losses


def same_weights(a, b) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def bench_config(name: str, size_name: str, args) -> dict:
    import torch

    size = SIZES[size_name]
    train, valid, vocab = load_data(args, size, max(args.pairs, size["batch_size"] * (args.steps + 1)))
    # warm-up pair, untimed: also the equality check
    _, _, _, m_trainer, l_trainer = run_trainer(name, size, vocab, train, valid, args, record_losses=True)
    _, _, tokens, m_plain, l_plain = run_plain(name, size, vocab, train, valid, args, record_losses=True)
    losses_equal = len(l_trainer) == len(l_plain) == args.steps and all(
        torch.equal(a, b) for a, b in zip(l_trainer, l_plain))
    weights_equal = [same_weights(m_trainer, m_plain)]
    rows = []
    for rep in range(args.repeats):
        row = {}
        for mode in (("trainer", "plain") if rep % 2 == 0 else ("plain", "trainer")):
            if mode == "trainer":
                cpu, wall, final_cpu, m_t, _ = run_trainer(name, size, vocab, train, valid, args)
                row.update(trainer_cpu=cpu, trainer_wall=wall, trainer_final_cpu=sum(final_cpu.values()),
                           trainer_validation_cpu=final_cpu["_check"], trainer_checkpoint_cpu=final_cpu["_save"])
            else:
                cpu, wall, _, m_p, _ = run_plain(name, size, vocab, train, valid, args)
                row.update(plain_cpu=cpu, plain_wall=wall)
        weights_equal.append(same_weights(m_t, m_p))
        rows.append(row)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    steps_only = [r["trainer_cpu"] - r["trainer_final_cpu"] for r in rows]
    rate = lambda s: round(tokens / s, 1)  # noqa: E731 - response tokens per second
    return {
        "model": name, "size": size_name, "config": m_plain.config_dict(), "vocab": vocab,
        "batch_size": size["batch_size"], "steps": args.steps, "response_tokens": tokens, "repeats": args.repeats,
        "plain_response_tokens_per_cpu_s": rate(med["plain_cpu"]),
        "trainer_response_tokens_per_cpu_s": rate(med["trainer_cpu"]),
        "trainer_steps_only_response_tokens_per_cpu_s": rate(statistics.median(steps_only)),
        "trainer_final_check_and_save_cpu_s": round(med["trainer_final_cpu"], 3),
        "of_which_validation_and_best_weights_cpu_s": round(med["trainer_validation_cpu"], 3),
        "of_which_checkpoint_cpu_s": round(med["trainer_checkpoint_cpu"], 3),
        "ratio_whole_fit": round(statistics.median(r["plain_cpu"] / r["trainer_cpu"] for r in rows), 3),
        "ratio_steps_only": round(statistics.median(r["plain_cpu"] / s for r, s in zip(rows, steps_only)), 3),
        "wall": {"plain_response_tokens_per_s": rate(med["plain_wall"]),
                 "trainer_response_tokens_per_s": rate(med["trainer_wall"]),
                 "ratio_whole_fit": round(statistics.median(r["plain_wall"] / r["trainer_wall"] for r in rows), 3)},
        "losses_equal": losses_equal, "weights_equal_every_run": all(weights_equal),
        "per_repeat_cpu_s": [{k: round(v, 3) for k, v in r.items()} for r in rows],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare-dir", default=None, help="a prepare artifact dir (default: synthetic pairs)")
    ap.add_argument("--configs", default="seq2seq:demo,seq2seq:paper", help="model:size list (sizes: demo, paper)")
    ap.add_argument("--steps", type=int, default=8, help="training steps per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=5000, help="training pairs the batches come from")
    ap.add_argument("--valid-pairs", type=int, default=256, help="pairs of the trainer's final validation")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=13)
    # one thread: with two on a busy 2-core machine, torch's OpenMP workers spin while they wait for a core, and
    # that spinning is CPU time of the process (measured: 4 demo-size steps, 13 s of CPU on two threads, 0.3 s on one)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"clock": "process CPU time", "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "stderr_is_tty": sys.stderr.isatty(), "data": args.prepare_dir or "synthetic (chitchat-like lengths)",
           "load_avg_at_start": os.getloadavg(), "target": "ratio_steps_only >= 0.9", "results": []}
    for spec in args.configs.split(","):
        name, size_name = spec.split(":")
        out["results"].append(bench_config(name, size_name, args))
        print(json.dumps(out["results"][-1]), file=sys.stderr)
    out["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
