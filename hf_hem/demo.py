"""A one-minute demonstration: a small MLP on scikit-learn's digits, trained with CE and with HEM."""

from __future__ import annotations

import torch
from torch import nn

from .losses import get_loss


def _digits_split(seed: int):
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    labels = torch.tensor(digits.target, dtype=torch.long)
    permutation = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    features, labels = features[permutation], labels[permutation]
    split = int(0.8 * len(labels))
    return (features[:split], labels[:split]), (features[split:], labels[split:])


def train_digits_mlp(loss_name: str, *, epochs: int = 30, batch_size: int = 64, seed: int = 0, lr: float = 0.05):
    """Trains a 64-128-10 MLP on digits with `loss_name`; returns (model, test features, test labels)."""
    (x_train, y_train), (x_test, y_test) = _digits_split(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    counts = torch.bincount(y_train, minlength=10)
    kwargs = {"class_counts": counts} if loss_name in ("hem", "hem+", "la", "mm", "mm+maz", "mm+thres") else {}
    criterion = get_loss(loss_name, **kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(y_train), generator=generator).split(batch_size):
            optimizer.zero_grad()
            criterion(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
    return model, x_test, y_test


def run_demo(losses=("ce", "hem"), seed: int = 0) -> dict[str, dict[str, float]]:
    """Trains one MLP per loss and reports test accuracy and the mean max-softmax probability."""
    results = {}
    for name in losses:
        model, x_test, y_test = train_digits_mlp(name, seed=seed)
        with torch.no_grad():
            logits = model(x_test)
        probabilities = logits.softmax(dim=1)
        results[name] = {
            "accuracy": float((logits.argmax(1) == y_test).float().mean()),
            "mean_max_softmax": float(probabilities.max(1).values.mean()),
        }
    return results


def format_results(results: dict[str, dict[str, float]]) -> str:
    keys = list(next(iter(results.values())))
    lines = ["| loss | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, values in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[k]:.4f}" for k in keys) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_results(run_demo()))
