"""Train a residual LSTM/GRU on sentence-vector windows, top to bottom.

Loss = (1 - cos(ŷ, y)) + mse_weight * ||ŷ - y||² on the L2-normalised prediction ŷ.
On unit vectors ||ŷ - y||² = 2(1 - cos), so the MSE term points the same way as the cosine
term: it sharpens large errors without pulling on the raw output's norm. MSE on the raw,
un-normalised output measured worse here (val cos 0.469 vs 0.517 on the starter corpus).
The default objective (cosine_bank) adds 0.03 times the cross-entropy of the true next sentence
among the training sentences, over 4096 drawn per step (bank_loss): trained on cosine alone, the
correction raised the mean cosine and lowered the true next sentence's rank on every split.

AdamW, cosine-annealed learning rate, gradient clipping, 8 epochs with the best epoch's weights
restored (early stopping by ``patience``, off by default: TrainConfig): val peaked at epochs 5-7
of 15 when measured, and longer training overfit, hurting out-of-distribution scores most. With a
select split (whole topics kept out of
training), the kept epoch and the gate alpha on the recurrent correction are chosen there, not
on in-domain val, which rewarded a correction that did not transfer (training.gate).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from lvm.models import ModelConfig, build_model
from training import gate
from training.data import Windows
from training.evaluate import predict, score


@dataclass
class TrainConfig:
    model_type: str = "lstm"
    d_model: int = 256
    num_layers: int = 4
    dropout: float = 0.1
    context_len: int = 5
    mean_residual: bool = True
    linear_path: bool = True  # start from the closed-form linear fit; the blocks learn a correction (ModelConfig)
    linear_lr: float = 0.0  # learning-rate factor of the linear path: 0 keeps ridge's weights fixed
    # cosine_bank, the default since issue 32: the cosine objective alone raised cos(next) over the
    # linear start and lowered R@10 on every split, and lost cos on technical prose it never saw;
    # with a little of the bank's cross-entropy the correction keeps the ranks close and gains cos
    # on that register too (docs/engine.md). Weight 0.05 ranked higher and lost cos(next) on ood.
    objective: str = "cosine_bank"  # OBJECTIVES
    temperature: float = 0.05  # infonce and cosine_bank
    bank_weight: float = 0.03  # cosine_bank only: weight of the cross-entropy over the training sentences
    # cosine_bank only: negatives drawn per step (0: every training sentence). The whole bank made an
    # epoch 12x slower (118-128 s against 10 s, 63k sentences); 4096 drawn, 1.3x, the same scores
    # to 0.0005 on every split. bank_loss corrects for the sample.
    bank_sample: int = 4096
    # cosine_bank with bank_sample only: per window, the bank rows nearest the linear start's prediction
    # (context and next left out), added to the candidates: where R@10 is decided (bank_loss).
    bank_hard: int = 0
    margin_weight: float = 1.0  # cosine_margin only: weight of the hinge on the next-previous margin
    margin_target: float = 0.0  # cosine_margin only: the margin below which the hinge pulls
    # What chooses the kept epoch: "cos", cos(next) on the select split with the gate (val, alpha 1,
    # without one); "margin_at_base", the margin where the forward curve falls to the context mean's
    # cos (scores.margin_at), with alpha 1: how a margin objective is compared at equal closeness.
    select_by: str = "cos"
    # With select_by cos and the select split's registers: no alpha at which a register's R@10 or
    # within-document accuracy falls below the linear start's (training.gate). Measured and left off
    # (docs/engine.md): on the select split some register's R@10 fell at almost every alpha of every
    # epoch, by a window or a few, and the gate served the linear start or an early epoch.
    gate_keeps_ranks: bool = False
    # bfloat16: forward and loss under CPU autocast (float32 master weights). auto picks it where
    # the CPU has native bfloat16 (AMX / AVX512-BF16): a training step measured 1.9x faster there.
    precision: str = "auto"
    epochs: int = 8
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.01
    mse_weight: float = 0.5
    grad_clip: float = 1.0
    # Epochs without a better select score before stopping. The bank objective's select score is flat
    # for its first epochs and rises after (seed 1: 0.5817, 0.5815, 0.5817, then up to 0.5826 at
    # epoch 8): a patience of 2 stopped it at epoch 3 with the first epoch's correction. The best
    # epoch is kept whatever the patience, so the default runs all 8.
    patience: int = 8
    warmup_epochs: float = 0.0  # linear learning-rate warm-up before the cosine decay
    # Exponential moving average of the weights, per step (0: off): epochs are judged, kept and
    # served with the averaged weights. Measured at 0.998 and left off: the average lagged the
    # weights (alpha 0.45 at epoch 8, select cos 0.5825 against 0.5830) and ranked no better.
    ema: float = 0.0
    seed: int = 0


OBJECTIVES = ("cosine_mse", "infonce", "cosine_margin", "cosine_bank")


def loss_fn(pred: torch.Tensor, target: torch.Tensor, mse_weight: float) -> torch.Tensor:
    cos = F.cosine_similarity(pred, target, dim=-1)
    sq = ((pred - target) ** 2).sum(dim=-1)
    return (1 - cos).mean() + mse_weight * sq.mean()


def margin_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    previous: torch.Tensor,
    mse_weight: float,
    weight: float,
    target_margin: float,
) -> torch.Tensor:
    """loss_fn plus a hinge on the margin cos(ŷ, next) - cos(ŷ, previous): every model here sat
    nearer the last sentence than the next one, and the cosine loss alone is content with that,
    since the previous sentence is the best single guess of the next. The hinge pulls only where
    the margin is below ``target_margin``, so it costs cos(next) only where the model echoes."""
    unit = F.normalize(pred, dim=-1)
    margin = (unit * target).sum(-1) - (unit * previous).sum(-1)
    return loss_fn(pred, target, mse_weight) + weight * F.relu(target_margin - margin).mean()


def infonce_loss(pred: torch.Tensor, target: torch.Tensor, context: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the true next vector against the batch's other next vectors and the
    window's own context sentences (hard negatives: what a model that echoes would pick)."""
    in_batch = pred @ target.T  # [B, B], the diagonal is the positive
    own_context = torch.einsum("bd,bld->bl", pred, context)  # [B, L]
    logits = torch.cat([in_batch, own_context], dim=1) / temperature
    return F.cross_entropy(logits, torch.arange(len(pred), device=pred.device))


def bank_loss(
    pred: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, context: torch.Tensor, bank: torch.Tensor,
    mse_weight: float, weight: float, temperature: float, candidates: torch.Tensor | None = None,
    hard: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """loss_fn plus the cross-entropy of the true next sentence against every training sentence,
    the window's own context left out: what R@10 ranks (the true next among all corpus sentences,
    context excluded). A correction trained on cosine alone moves predictions towards where many
    next sentences lie, which raises cos(next) and lowers the true one's rank among its neighbours.

    With ``candidates`` (bank rows holding every row's next sentence plus uniform draws), the
    cross-entropy is a sampled softmax over them: each candidate but a row's own next stands for
    (S-1)/(C-1) sentences, so its logit gains log((S-1)/(C-1)) and the sum over the sample estimates
    the full bank's partition function (Jean et al. 2015); without the correction the few negatives
    would weigh too little against the positive and the objective would drift towards cosine alone.
    With ``hard`` ([B, H] bank rows, each row's nearest sentences, all among the candidates), the
    estimate is stratified: a row's own hard sentences count once, exactly, and the rest of the
    sample stands for the rest of the bank, (S-1-H)/(C-1-H) each."""
    unit = F.normalize(pred, dim=-1)
    if candidates is None:
        logits = unit @ bank.T / temperature  # [B, S]
        logits = logits.scatter(1, context, float("-inf"))
        return loss_fn(pred, target, mse_weight) + weight * F.cross_entropy(logits, rows)
    size, drawn = len(bank), len(candidates)
    where = torch.full((size,), drawn, dtype=torch.long)  # bank row -> candidate column; drawn = not drawn
    where[candidates] = torch.arange(drawn)
    positive = where[rows]
    exact = positive[:, None] if hard is None else torch.cat([positive[:, None], where[hard]], dim=1)
    if bool((exact == drawn).any()):
        raise ValueError("the candidates must hold every row's next sentence and hard negatives")
    counted = exact.shape[1] - 1  # hard negatives, counted exactly
    logits = unit @ bank[candidates].T / temperature  # [B, C]
    correction = torch.full_like(logits, math.log((size - 1 - counted) / max(1, drawn - 1 - counted)))
    correction.scatter_(1, exact, 0.0)
    masked = torch.zeros(len(pred), drawn + 1, dtype=torch.bool).scatter_(1, where[context], True)[:, :drawn]
    logits = (logits + correction).masked_fill(masked, float("-inf"))
    return loss_fn(pred, target, mse_weight) + weight * F.cross_entropy(logits, positive)


def bank_candidates(
    rows: np.ndarray, size: int, sample: int, rng: np.random.Generator, hard: np.ndarray | None = None
) -> torch.Tensor | None:
    """The batch's next sentences, its hard negatives and ``sample`` uniform draws from the bank,
    each once; None for the whole bank (``sample`` 0, or as large as the bank)."""
    if sample <= 0 or sample >= size:
        return None
    parts = [rows, rng.integers(0, size, sample)] + ([] if hard is None else [hard.ravel()])
    return torch.from_numpy(np.unique(np.concatenate(parts)))


@torch.inference_mode()
def mine_hard(model: torch.nn.Module, windows: Windows, bank: torch.Tensor, k: int, chunk: int = 1024) -> np.ndarray:
    """[W, k] bank rows nearest each window's prediction before training (the linear start), its
    context and next sentence left out: the sentences that outrank the true next one, or nearly do,
    where the correction starts. Mined once: the linear path does not train by default."""
    from training.evaluate import context_batches

    unit_bank = F.normalize(bank, dim=-1)
    out, start = [], 0
    for ctx in context_batches(model, windows, chunk):
        scores = model(ctx).float() @ unit_bank.T  # the forward's prediction, already unit
        sl = slice(start, start + len(ctx))
        scores.scatter_(1, torch.from_numpy(windows.context[sl]), float("-inf"))
        scores.scatter_(1, torch.from_numpy(windows.target[sl])[:, None], float("-inf"))
        out.append(scores.topk(k, dim=1).indices.numpy())
        start += len(ctx)
    return np.concatenate(out)


def linear_init(model: torch.nn.Module, train_set: Windows, val_set: Windows) -> dict:
    """Set the linear path to the closed-form positional-prior ridge (training.baselines, alpha chosen
    on val) and zero the recurrent correction, so training starts at that estimate exactly."""
    from training.baselines import fit

    linear = fit(train_set, val_set, "positional_ridge")
    weights = torch.from_numpy(linear.weights)  # [L*D + 1, D]: the last row is the bias
    with torch.no_grad():
        model.linear.weight.copy_(weights[:-1].T)
        model.linear.bias.copy_(weights[-1])
        model.output_proj.weight.zero_()
        model.output_proj.bias.zero_()
    return {"kind": linear.kind, "alpha": linear.alpha, "val_cos": linear.val_cos}


def _margin_at_base(model: torch.nn.Module, windows: Windows, target: float) -> float:
    """Margin at ``target``, the context mean's cos(next) on ``windows``; -inf where the model's cos
    stays below it (it cannot be read at equal closeness), the last point's margin where it stays above."""
    from training.scores import forward_curve, forward_values, margin_at

    curve = forward_curve(forward_values(predict(model, windows), windows), None)
    at = margin_at(curve, target)
    if at is not None:
        return float(at)
    return float(curve[-1]["margin"]) if curve[-1]["cos_next"] > target else -math.inf


def _autocast(precision: str) -> bool:
    if precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"precision must be auto, float32 or bfloat16, not {precision!r}")
    if precision == "auto":
        from lvm.encoders import cpu_has_native_bf16

        return cpu_has_native_bf16()
    return precision == "bfloat16"


def train(
    cfg: TrainConfig,
    train_set: Windows,
    val_set: Windows,
    select_set: Windows | None = None,
    progress: bool = True,
    select_registers: dict[str, Windows] | None = None,
):
    """Returns (best model in eval mode, per-epoch history, the kept epoch's metrics).

    With ``select_set`` (documents kept out of training; training.gate), the kept epoch and the
    gate alpha the model serves are chosen on it; without one, on val with alpha 1.
    ``select_registers`` (the select split by source) hold the gate to each one's ranks
    (``gate_keeps_ranks``).
    """
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dim = train_set.vectors.shape[1]
    model = build_model(
        ModelConfig(
            model_type=cfg.model_type,
            input_dim=dim,
            d_model=cfg.d_model,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout,
            context_len=cfg.context_len,
            mean_residual=cfg.mean_residual and not cfg.linear_path,  # the linear path replaces the mean
            linear_path=cfg.linear_path,
        )
    )
    autocast = _autocast(cfg.precision)
    if cfg.select_by not in ("cos", "margin_at_base"):
        raise ValueError(f"select_by must be cos or margin_at_base, not {cfg.select_by!r}")
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {cfg.objective!r}")
    groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("linear.")]}]
    linear_start = linear_init(model, train_set, val_set) if cfg.linear_path else None
    if cfg.linear_path:
        if cfg.linear_lr > 0:
            groups.append({"params": list(model.linear.parameters()), "lr": cfg.lr * cfg.linear_lr})
        else:
            model.linear.requires_grad_(False)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total_steps - 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
        ),
    )

    bank = torch.from_numpy(train_set.vectors) if cfg.objective == "cosine_bank" else None
    draws = np.random.default_rng(cfg.seed + 1)  # the bank's negatives; apart, so the batch order stays the seed's
    hard = None
    if bank is not None and cfg.bank_hard > 0:
        if cfg.bank_sample <= 0:
            raise ValueError("bank_hard needs bank_sample: the whole bank already holds every hard negative")
        model.eval()
        hard = mine_hard(model, train_set, bank, cfg.bank_hard)
    rank_bank = None  # the training sentences the gate ranks against (gate.RANK_BANK of them)
    if cfg.gate_keeps_ranks and select_registers and cfg.select_by == "cos":
        picks = np.random.default_rng(cfg.seed + 2).permutation(len(train_set.vectors))[: gate.RANK_BANK]
        rank_bank = train_set.vectors[np.sort(picks)]
    history: list[dict] = []
    best: tuple[float, dict, dict] | None = None
    stale, start = 0, None
    if cfg.select_by == "margin_at_base":  # the baseline's cos does not change between epochs
        from training.evaluate import baseline

        judged_on = select_set or val_set
        base_cos = score(baseline("context_mean", judged_on), judged_on)["cos_mean"]

    def judge(epoch: int, record: dict) -> tuple[float, dict]:
        """Score this epoch as it would be served: with a select split, the gate alpha and the
        criterion come from it (training.gate); without one, alpha is 1 and val decides.
        Returns (criterion, the metrics recorded if the epoch is kept)."""
        model.eval()
        alpha, chosen_on = 1.0, None
        if cfg.select_by == "margin_at_base":  # alpha stays 1: a gate chosen on cos undoes the objective
            chosen_on = _margin_at_base(model, judged_on, base_cos)
        elif select_set is not None:
            alpha, chosen_on, _, held = gate.choose(model, select_set, select_registers, rank_bank)
            if held is not None:
                record["alpha_held_by"] = held
        model.config = replace(model.config, correction_scale=alpha)
        val = score(predict(model, val_set), val_set)
        model.config = replace(model.config, correction_scale=1.0)  # the correction trains at full scale
        record.update({"val_cos": val["cos_mean"], "val_mse": val["mse"], "val_margin": val["margin"]})
        if cfg.select_by == "margin_at_base":
            record["select_margin_at_base"] = chosen_on
        elif select_set is not None:
            record.update({"select_cos": chosen_on, "alpha": alpha})
        criterion = val["cos_mean"] if chosen_on is None else chosen_on
        kept = {"best_epoch": epoch, "correction_scale": alpha, **{f"val_{k}": v for k, v in val.items()}}
        if chosen_on is not None:
            kept["select_margin_at_base" if cfg.select_by == "margin_at_base" else "select_cos_mean"] = chosen_on
        return criterion, kept

    def weights() -> dict:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    if not 0.0 <= cfg.ema < 1.0:
        raise ValueError(f"ema must be in [0, 1), not {cfg.ema}")
    averaged = weights() if cfg.ema > 0 else None  # starts at the linear start: the correction at zero

    def judge_averaged(epoch: int, record: dict) -> tuple[float, dict]:
        """judge() on the averaged weights where there are any, the live ones back after."""
        if averaged is None:
            return judge(epoch, record)
        live = weights()
        model.load_state_dict(averaged)
        try:
            return judge(epoch, record)
        finally:
            model.load_state_dict(live)

    def judged_weights() -> dict:
        """A copy of what judge_averaged judged: what the epoch serves if it is kept."""
        return weights() if averaged is None else {k: v.clone() for k, v in averaged.items()}

    if cfg.linear_path:
        # Epoch 0, the closed-form start, is kept if no trained epoch beats it (a GRU's correction
        # measured below its start for all 8 epochs on val). It does not drive patience: the first
        # epochs of the correction fall below the start before they rise above it.
        record = {"epoch": 0}
        criterion, kept = judge(0, record)
        start = (criterion, weights(), kept)
        history.append(record)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        started = time.perf_counter()
        order = rng.permutation(len(train_set))
        total = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"{cfg.model_type} epoch {epoch}/{cfg.epochs}", disable=not progress)
        for step in bar:
            rows = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            ctx, tgt = (torch.from_numpy(a) for a in train_set.batch(rows))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                pred = model(ctx).float()
            if cfg.objective == "infonce":
                loss = infonce_loss(pred, tgt, ctx, cfg.temperature)
            elif cfg.objective == "cosine_bank":
                target_rows = train_set.target[rows]
                context_rows = torch.from_numpy(train_set.context[rows])
                row_hard = None if hard is None else hard[rows]
                candidates = bank_candidates(target_rows, len(bank), cfg.bank_sample, draws, row_hard)
                loss = bank_loss(pred, tgt, torch.from_numpy(target_rows), context_rows, bank, cfg.mse_weight,
                                 cfg.bank_weight, cfg.temperature, candidates,
                                 None if row_hard is None else torch.from_numpy(row_hard))  # fmt: skip
            elif cfg.objective == "cosine_margin":
                prev = torch.from_numpy(train_set.vectors[train_set.previous[rows]])
                loss = margin_loss(pred, tgt, prev, cfg.mse_weight, cfg.margin_weight, cfg.margin_target)
            else:
                loss = loss_fn(pred, tgt, cfg.mse_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            if averaged is not None:
                with torch.no_grad():
                    for k, v in model.state_dict().items():
                        if v.is_floating_point():
                            averaged[k].lerp_(v, 1.0 - cfg.ema)
                        else:
                            averaged[k].copy_(v)
            total += loss.item() * len(rows)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        record = {"epoch": epoch, "train_loss": total / len(train_set)}
        criterion, kept = judge_averaged(epoch, record)
        record.update({"lr": scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - started, 2)})
        history.append(record)
        if progress:
            gated = f"  select cos {record['select_cos']:.4f} at alpha {record['alpha']}" if "alpha" in record else ""
            gated += f" (higher: {record['alpha_held_by']} falls)" if "alpha_held_by" in record else ""
            if "select_margin_at_base" in record:
                gated = f"  margin at the context mean's cos {record['select_margin_at_base']:+.4f}"
            print(
                f"  epoch {epoch}: train loss {record['train_loss']:.4f}  val cos {record['val_cos']:.4f}  "
                f"margin {record['val_margin']:+.4f}{gated}  ({record['seconds']} s)",
                flush=True,
            )
        if best is None or criterion > best[0]:
            stale, best = 0, (criterion, judged_weights(), kept)
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if start is not None and (best is None or start[0] >= best[0]):
        best = start
    assert best is not None
    _, state, best_metrics = best
    model.load_state_dict(state)
    model.config = replace(model.config, correction_scale=best_metrics["correction_scale"])
    model.eval()
    best_metrics["train_config"] = asdict(cfg)
    if linear_start is not None:
        best_metrics["linear_init"] = linear_start
    return model, history, best_metrics
