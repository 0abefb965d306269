"""Names and published settings the condensation modules and the CLI share (no torch import, so
that ``pixcon --help`` stays fast)."""

from __future__ import annotations

from collections.abc import Sequence

TASKS: tuple[str, ...] = ("classification", "segmentation")
RULES: tuple[str, ...] = ("dc", "dcc")  # matching rules (pixcon.condense.matching)
INITS: tuple[str, ...] = ("real", "noise")  # synthetic-set initialisation
DATASETS: tuple[str, ...] = ("fashion", "fashion-cluttered")  # classification datasets
NORMS: tuple[str, ...] = ("instancenorm", "batchnorm", "none")  # ConvNet normalisation layers
DSA_FAMILIES: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY: tuple[str, ...] = DSA_FAMILIES  # the official "color_crop_cutout_flip_scale_rotate"

# (matching_steps T, net_steps varsigma_theta) per images per class, from the official code
# (``get_loops``): DC (VICO-UoE/DatasetCondensation) and DCC (Saehyung-Lee/DCC), which differ
# only at 1 image per class. Both run K = 1000 outer iterations.
PAPER_LOOPS: dict[str, dict[int, tuple[int, int]]] = {
    "dc": {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)},
    "dcc": {1: (10, 5), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)},
}
PAPER_ITERATIONS = 1000
PAPER_WARMUP = (250, 10)  # DCC's outer_warmup and inner_warmup defaults
PAPER_BATCH_REAL = 256  # real images per class in a matching step


def check_rule(rule: str) -> None:
    """Raises ValueError unless `rule` is one of `RULES`."""
    if rule not in RULES:
        raise ValueError(f"unknown matching rule {rule!r}; choose one of {list(RULES)}")


def paper_loops(method: str, ipc: int) -> tuple[int, int]:
    """The papers' ``(matching_steps, net_steps)`` for a method and images per class.

    Raises:
        ValueError: Unknown method, or an ipc the papers give no loops for (the message lists them).
    """
    check_rule(method)
    table = PAPER_LOOPS[method]
    if ipc not in table:
        raise ValueError(
            f"the papers give loop lengths for {sorted(table)} images per class, not {ipc}; "
            "set matching_steps and net_steps explicitly"
        )
    return table[ipc]


def check_strategy(strategy: Sequence[str]) -> tuple[str, ...]:
    """Validates a DSA strategy (families to draw from); returns it as a tuple."""
    out = tuple(strategy)
    if not out:
        raise ValueError("DSA strategy is empty; give at least one of " + ", ".join(DSA_FAMILIES))
    unknown = [f for f in out if f not in DSA_FAMILIES]
    if unknown:
        raise ValueError(f"unknown DSA transformation(s) {unknown}; choose from {list(DSA_FAMILIES)}")
    return out


def parse_strategy(text: str) -> tuple[str, ...]:
    """``"color_crop_cutout"`` (the official spelling) or ``"color,crop,cutout"`` -> a strategy."""
    return check_strategy([p for p in text.replace(",", "_").split("_") if p])
