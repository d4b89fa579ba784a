"""The training log a person reads: text lines and progress.png (losses, pseudo-Dice, learning rate)."""

from __future__ import annotations

from pathlib import Path

from kneeseg.io import atomic_path


def plot_progress(history: dict[str, list], class_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(len(history["train_loss"])))
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(epochs, history["train_loss"], label="train loss")
    axes[0].plot(epochs, history["val_loss"], label="validation loss")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    for c, name in enumerate(class_names):
        axes[1].plot(epochs, [d[c] for d in history["pseudo_dice"]], alpha=0.4, label=f"{name}")
    axes[1].plot(epochs, history["ema_dice"], "k", linewidth=2, label="mean, EMA")
    axes[1].set_ylabel("pseudo-Dice (validation patches)")
    axes[1].set_ylim(0, 1)
    axes[1].legend(loc="lower right")
    axes[2].plot(epochs, history["lr"])
    axes[2].set_ylabel("learning rate")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
