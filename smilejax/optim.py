"""Optimizer and learning-rate schedule from the ``optimizer`` config section (optax)."""

from __future__ import annotations

import optax

from smilejax.config import OptimizerConfig


def warmup_steps(cfg: OptimizerConfig, total_steps: int) -> int:
    return round(cfg.warmup * total_steps) if cfg.warmup < 1 else int(cfg.warmup)


def schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    warm = min(warmup_steps(cfg, total_steps), total_steps)
    if cfg.schedule == "constant":
        if warm == 0:
            return optax.constant_schedule(cfg.lr)
        return optax.join_schedules(
            [optax.linear_schedule(cfg.initial_lr, cfg.lr, warm), optax.constant_schedule(cfg.lr)], [warm]
        )
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=cfg.initial_lr,
            peak_value=cfg.lr,
            warmup_steps=warm,
            decay_steps=max(total_steps, warm + 1),
            end_value=cfg.final_lr,
        )
    # One-cycle as salt uses it: warm-up from initial_lr to lr, cosine annealing down to final_lr.
    initial = cfg.initial_lr if cfg.initial_lr > 0 else cfg.lr / 25
    final = cfg.final_lr if cfg.final_lr > 0 else initial / 1e4
    return optax.cosine_onecycle_schedule(
        transition_steps=max(total_steps, 1),
        peak_value=cfg.lr,
        pct_start=max(warm / max(total_steps, 1), 1e-6),
        div_factor=cfg.lr / initial,
        final_div_factor=initial / final,
    )


def make(cfg: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    lr = schedule(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    elif cfg.name == "lion":
        opt = optax.lion(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    else:
        opt = optax.lamb(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt, lr
