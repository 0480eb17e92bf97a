"""The speed/quality figure of `d2f eval --plot` (matplotlib, imported only when asked for)."""
from __future__ import annotations


def plot_curve(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    settings, ar = report["settings"], report["ar"]
    # Single-stream speed when measured (what D2F buys a lone user), else the batched figure.
    speed = "single_stream_tokens_per_second" if ar.get("single_stream_tokens_per_second") else "tokens_per_second"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "reference_nll", "reference NLL per token (lower is better)"),
                           (axes[1], "agreement", "agreement with AR greedy (higher is better)")):
        pts = [(s[speed], s[key], s["knobs"]) for s in settings if s.get(key) is not None]
        curve = [p for p in pts if not p[2].get("exact")]
        exact = [p for p in pts if p[2].get("exact")]  # a mode of its own: the AR output, drafted and verified
        ax.plot([p[0] for p in curve], [p[1] for p in curve], "o-", label="D2F")
        if exact:
            ax.plot([p[0] for p in exact], [p[1] for p in exact], "gs", label="exact (AR output)")
        for x, y, k in pts:
            name = "exact" if k.get("exact") else f"{k['tau_conf']:.3g}/{k['tau_act']:.3g}"
            ax.annotate(f"{name}/B{k['block_size']}", (x, y), fontsize=7, textcoords="offset points", xytext=(4, 4))
        if ar.get(key) is not None:
            ax.plot([ar[speed]], [ar[key]], "r*", markersize=12, label="AR (reference)")
        lc = report.get("llama_cpp")
        if speed.startswith("single") and lc and lc.get("tok_s"):  # measured one at a time, as ours
            ax.axvline(lc["tok_s"], color="gray", linestyle="--", label=f"llama.cpp ({lc['tok_s']} tok/s)")
        ax.set_xlabel("tokens / s" + (" (single stream)" if speed.startswith("single") else " (batched)"))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{report['model']}  ({report['num_prompts']} prompts, max {report['max_tokens']} tokens)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
