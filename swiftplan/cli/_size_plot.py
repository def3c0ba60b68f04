"""`swiftplan size --plot FILE.png`: cost against time for every option that can run the job (matplotlib)."""

from __future__ import annotations

from typing import Any

from swiftplan.errors import SwiftplanError


def require_matplotlib() -> None:
    """Refuse --plot early, before any planning, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SwiftplanError(
            "--plot needs matplotlib, which is not installed.",
            hint="pip install 'swiftplan[plot]' (or pip install matplotlib).",
        ) from None


def plot_path(path: str) -> str:
    """--plot's file as it will be written: a name without a suffix gets .png (savefig's default format);
    a suffix matplotlib has no writer for is refused before any planning."""
    require_matplotlib()
    from pathlib import PurePath

    from matplotlib.backend_bases import FigureCanvasBase

    suffix = PurePath(path).suffix.lower().lstrip(".")
    if not suffix:
        return path + ".png"
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if suffix not in formats:
        raise SwiftplanError(
            f"--plot {path}: matplotlib cannot draw a '.{suffix}' file.",
            hint=f"Name a .png file (or one of: {', '.join('.' + f for f in formats if f != 'png')}).",
        )
    return path


def draw(report: Any, path: str) -> None:
    """Scatter of money (rental cost, or purchase price with --buy) against time, one colour per
    accelerator, with the recommended, cheapest and fastest options labelled."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranking = report.ranking
    serving = report.task == "serve"
    mode = ranking.mode
    points = [(o, o.money(mode)) for o in ranking.ranked if o.money(mode) is not None and o.time_s]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    by_accelerator: dict[str, list[tuple[float, float]]] = {}
    for option, money in points:
        x = option.time_s * 1000 if serving else option.time_s / 3600
        by_accelerator.setdefault(option.accelerator, []).append((x, money))
    for name, xy in by_accelerator.items():
        ax.scatter([p[0] for p in xy], [p[1] for p in xy], label=name, s=28)
    labels = (
        ("recommended", ranking.recommended),
        ("cheapest", ranking.cheapest),
        ("fastest", ranking.fastest),
    )
    for label, option in labels:
        money = option.money(mode) if option is not None else None
        if option is None or money is None or not option.time_s:
            continue
        x = option.time_s * 1000 if serving else option.time_s / 3600
        ax.annotate(
            f"{label}: {option.hardware}", (x, money), textcoords="offset points", xytext=(6, 6), fontsize=8
        )
    if points:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("ms per generated token per user" if serving else "time to finish the job (hours)")
    if mode == "rent":
        ax.set_ylabel("rental cost per hour (USD)" if serving else "rental cost of the job (USD)")
    else:
        ax.set_ylabel("purchase price (USD)")
    kind = "rental" if mode == "rent" else "purchase"
    ax.set_title(
        f"{report.model}: {len(points)} of {len(ranking.ranked)} options that run the job have a {kind} price"
    )
    if by_accelerator:
        ax.legend(fontsize=7, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as error:
        raise SwiftplanError(f"Cannot write --plot {path}: {error.strerror or error}.") from None
    finally:
        plt.close(fig)
