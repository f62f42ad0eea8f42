"""The course notes' claims, and verdicts computed from a lesson's own measurements.

A verdict is never typed. It follows from a 95 % interval of an effect signed in the claim's direction
(positive = as the notes say): `supported` when the whole interval lies above zero, `contradicted`
when it lies below, `not shown at this size` when it covers zero. The sentence a learner reads is
generated from the verdict, so it cannot contradict the numbers above it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .metrics import correct, item_nll, mean_interval, paired_bootstrap, proportion_interval, ratio_interval
from .record import RECORDED, record

__all__ = ["CLAIMS", "Claim", "VERDICTS", "Verdict", "accuracy_aside", "compare_accuracy", "compare_loss",
           "compare_predictions", "compare_seeds", "compare_speed", "judge", "ledger", "MIN_RUNS", "points_aside",
           "report", "share_above", "show_summary", "summary_table", "verdict_cells", "verdict_of", "weakest_part",
           "CS231N", "FASTAI", "NG", "CONTRADICTED", "NOT_SHOWN", "SUPPORTED"]

SUPPORTED, NOT_SHOWN, CONTRADICTED = "supported", "not shown at this size", "contradicted"
VERDICTS = (SUPPORTED, NOT_SHOWN, CONTRADICTED)
MIN_RUNS = 5        # fewer training runs per setting than this: a settled verdict is called provisional

NG = "Andrew Ng, CNN course, week 2"
FASTAI = "fast.ai 2017, lessons 1-2"
CS231N = "CS231n, lecture 11"


@dataclass(frozen=True)
class Claim:
    """One claim of the course notes, in our own words."""

    id: int
    lesson: str
    text: str
    source: str


CLAIMS: dict[int, Claim] = {c.id: c for c in [
    Claim(1, "01", "Freeze every pretrained layer and train only a new softmax head.", NG),
    Claim(2, "01", "Precompute the frozen layers' activations once, save them, and train the head on them: faster.", NG),
    Claim(3, "01", "The more data you have, the fewer layers you should freeze.", NG),
    Claim(4, "01", "Keep the last layers as initialisation, or replace them with new hidden units and a softmax.", NG),
    Claim(5, "01", "With lots of data, start from the pretrained weights and train every layer.", NG),
    Claim(6, "01", "Similar or dissimilar data, little or lots of it: a 2x2 table says what to retrain.", CS231N),
    Claim(7, "02", "Mirroring, random crops, rotation, shear and local warping are useful augmentations.", NG),
    Claim(8, "02", "Colour shifts, e.g. PCA colour augmentation, make a network robust to lighting.", NG),
    Claim(9, "02", "CPU workers can distort images in parallel with training.", NG),
    Claim(10, "02", "Data augmentation fights over-fitting.", FASTAI),
    Claim(11, "01", "Augmentation does nothing while training on precomputed activations.", FASTAI),
    Claim(12, "03", "The LR finder: plot loss against LR, pick about the minimum / 10, not the steepest point.", FASTAI),
    Claim(13, "03", "Rerun the LR finder after unfreezing or other changes: the good LR moves.", FASTAI),
    Claim(14, "04", "SGDR: cosine annealing with restarts trains better than a step or constant schedule.", FASTAI),
    Claim(15, "04", "Restarts find wider valleys, and a wide valley generalises better.", FASTAI),
    Claim(16, "04", "cycle_len, cycle_mult and the number of cycles set how long SGDR trains.", FASTAI),
    Claim(17, "04", "Save the weights from time to time (e.g. at the end of each cycle) and load them back.", FASTAI),
    Claim(18, "05", "Differential LRs after unfreezing: groups 10x apart for similar data, 3x for dissimilar.", FASTAI),
    Claim(19, "05", "For images unlike ImageNet, the first layers' features need relearning too.", FASTAI),
    Claim(20, "06", "Ensembles: average the models' outputs, not their weights; +1-2 % for 3-15x the cost.", CS231N),
    Claim(21, "06", "10-crop / multi-crop at test time helps a little and costs 10x.", NG),
    Claim(22, "06", "Test-time augmentation: average predictions over transformed copies of each image.", FASTAI),
    Claim(23, "08", "A confusion matrix shows which classes the model mixes up.", FASTAI),
    Claim(24, "08", "The full recipe, then retrain on training + validation data.", FASTAI),
    Claim(25, "07", "Stacks of 3x3 convolutions beat a 7x7 one; 1x1 bottlenecks cut the cost.", CS231N),
    Claim(26, "07", "im2col turns convolution into one big matmul at a large memory cost; FFT is hard in practice.",
          CS231N),
    Claim(27, "07", "Copying data to the GPU is the most expensive step; store data in contiguous files.", CS231N),
    Claim(28, "07", "fp16 is faster but has trouble converging without care (cast up, stochastic rounding).",
          CS231N),
    Claim(29, "07", "Split each mini-batch across GPUs and average the gradients.", CS231N),
]}


@dataclass(frozen=True)
class Verdict:
    """A claim measured in one run: effect (signed: positive = as the notes say), its 95 % interval and n."""

    id: int
    verdict: str
    effect: float
    ci: tuple[float, float]
    n: int
    what: str
    unit: str = "points"
    scale: float = 100.0     # the prose shows effect * scale + offset (accuracy fractions as points)
    offset: float = 0.0      # e.g. 1 for a speed-up, whose effect is `speed-up - 1`
    runs: int = 0            # training runs per setting behind the interval (0: not a repeated-run measurement)
    aside: str = ""          # a second measure of the same comparison, shown beside the verdict (e.g. accuracy)

    def record_entry(self) -> dict:
        """The run report's contract: id, verdict, effect, ci, n, what (plus unit, scale and aside for display)."""
        entry = asdict(self)
        entry["ci"] = list(self.ci)
        return entry

    def shown(self, value: float) -> str:
        """A value in display units, e.g. '+2.0' (points), '5.21' (a speed-up) or '+0.032' (nats, under 0.1)."""
        if self.offset:
            return f"{value * self.scale + self.offset:.2f}"
        shown = value * self.scale
        return f"{shown:+.{1 if self.unit == 'points' else 3 if abs(shown) < 0.1 else 2}f}"

    def settle_size(self) -> str:
        """For `not shown`: how many more of the run's units would narrow the interval to the effect's size."""
        half = (self.ci[1] - self.ci[0]) / 2
        if self.verdict != NOT_SHOWN or half <= 0:
            return ""
        if abs(self.effect) < half / 10:
            return (f"The effect is under a tenth of the interval's half-width: even {100 * self.n:,} would "
                    "likely not settle it; there may be no effect to find.")
        needed = math.ceil(self.n * (half / abs(self.effect)) ** 2 * 1.5)   # 1.5: the interval must clear zero
        return f"An effect of this size would need about n = {needed:,} (this run: {self.n:,}) to be settled."

    def fragile(self) -> str:
        """For a settled verdict whose interval only just clears zero: say so, and what size would settle it firmly.

        Why: such a verdict can read `not shown at this size` with another seed; the learner should know.
        """
        low, high = self.ci
        margin, width = min(abs(low), abs(high)), high - low
        if self.verdict == NOT_SHOWN or width <= 0 or margin >= 0.15 * width:
            return ""
        needed = math.ceil(4 * self.n * (width / 2 / abs(self.effect)) ** 2)   # interval edge at half the effect
        return (f"The interval clears zero by only {self.shown(margin).lstrip('+')} {self.unit}: another seed may "
                f"well read *{NOT_SHOWN}*; about n = {needed:,} would settle it with room to spare.")

    def few_runs(self) -> str:
        """For a settled verdict resting on fewer than `MIN_RUNS` training runs per setting: say it is provisional.

        Why: an interval resampled from two or three runs cannot know how far the next run lands, so
        another seed can overturn it; the learner should read it as provisional, not as settled.
        """
        if self.verdict == NOT_SHOWN or not 1 <= self.runs < MIN_RUNS:
            return ""
        return (f"It rests on {self.runs} training run{'s' if self.runs > 1 else ''} per setting, too few to know "
                f"how far another run would land: at this size another seed can change the verdict, so read it as "
                f"provisional ({MIN_RUNS} or more runs, e.g. a larger `seeds`, settle it).")

    def sentence(self, notes_say: str = "") -> str:
        """Markdown the learner reads: the measured effect, its interval and the verdict, then the notes' view."""
        claim = CLAIMS[self.id]
        lo, hi = self.ci
        text = (f"**Claim {self.id}** — *{claim.text}* ({claim.source}). In this run, {self.what}: "
                f"**{self.shown(self.effect)} {self.unit}** (95 % interval {self.shown(lo)} to {self.shown(hi)}, "
                f"n = {self.n:,}) → **{self.verdict}**.")
        if self.aside:
            text += f" Beside it, {self.aside}."
        if self.verdict == NOT_SHOWN:
            text += " " + self.settle_size()
        elif self.fragile():
            text += " " + self.fragile()
        if self.few_runs():
            text += " " + self.few_runs()
        if notes_say:
            text += f" The notes say: {notes_say}"
        return text


def verdict_of(low: float, high: float) -> str:
    """`supported` if the interval is above zero, `contradicted` if below, else `not shown at this size`."""
    if not low <= high:
        raise ValueError(f"interval ({low}, {high}) has low > high")
    return SUPPORTED if low > 0 else CONTRADICTED if high < 0 else NOT_SHOWN


def judge(claim_id: int, effect: float, ci: Sequence[float], n: int, what: str, unit: str = "points",
          scale: float = 100.0, offset: float = 0.0, runs: int = 0, aside: str = "") -> Verdict:
    """A verdict from an effect and its interval, both signed in the claim's direction."""
    if claim_id not in CLAIMS:
        raise KeyError(f"no claim {claim_id}; the registry has 1..{max(CLAIMS)}")
    low, high = float(ci[0]), float(ci[1])
    return Verdict(claim_id, verdict_of(low, high), float(effect), (low, high), int(n), what, unit, scale, offset,
                   int(runs), aside)


def compare_accuracy(claim_id: int, correct_as_notes_say: Sequence, correct_other: Sequence, what: str,
                     seed: int = 0) -> Verdict:
    """Verdict on 'A is more accurate than B' from per-image correctness on the same images (paired bootstrap).

    `[runs, images]` arrays (one row per training seed) resample the runs too and count them in `runs`.
    """
    effect, low, high = paired_bootstrap(correct_as_notes_say, correct_other, seed=seed)
    shape = np.shape(correct_other)
    return judge(claim_id, effect, (low, high), shape[-1], what, runs=shape[0] if len(shape) == 2 else 0)


def compare_loss(claim_id: int, loss_as_notes_say: Sequence, loss_other: Sequence, what: str,
                 seed: int = 0, aside: str = "") -> Verdict:
    """Verdict on 'A predicts better than B' from per-image log-losses on the same images: B's minus A's.

    Why a loss: it scores the probability given to every image's class, not only which class wins, so it
    resolves a gain of a fraction of a point that accuracy, moving in steps of one image, cannot resolve
    on a hundred-odd images. The interval is a paired bootstrap over the images; `[runs, images]` arrays
    (one row per training seed) resample the runs too and count them in `runs`.
    """
    effect, low, high = paired_bootstrap(loss_other, loss_as_notes_say, seed=seed)
    shape = np.shape(loss_other)
    return judge(claim_id, effect, (low, high), shape[-1], what, unit="nats of log-loss", scale=1.0,
                 runs=shape[0] if len(shape) == 2 else 0, aside=aside)


def points_aside(label: str, effect: float, low: float, high: float) -> str:
    """'accuracy +0.7 points (95 % interval -1.3 to +3.3)' from a difference of fractions and its interval."""
    return f"{label} {100 * effect:+.1f} points (95 % interval {100 * low:+.1f} to {100 * high:+.1f})"


def accuracy_aside(correct_a: Sequence, correct_b: Sequence, seed: int = 0, label: str = "accuracy") -> str:
    """'accuracy +0.7 points (95 % interval -1.3 to +3.3)': A minus B on the same images, paired."""
    return points_aside(label, *paired_bootstrap(correct_a, correct_b, seed=seed))


def compare_predictions(claim_id: int, probs_as_notes_say, probs_other, targets, what: str,
                        seed: int = 0) -> Verdict:
    """`compare_loss` on two models' probabilities `[N, K]` for the same images, their accuracy difference aside."""
    aside = accuracy_aside(correct(probs_as_notes_say, targets), correct(probs_other, targets), seed)
    return compare_loss(claim_id, item_nll(probs_as_notes_say, targets).numpy(), item_nll(probs_other, targets).numpy(),
                        what, seed=seed, aside=aside)


def share_above(claim_id: int, successes: int, n: int, bar: float, what: str) -> Verdict:
    """Verdict on a mechanism that should almost always hold: the share of successes minus a stated bar."""
    share, low, high = proportion_interval(successes, n)
    return judge(claim_id, share - bar, (low - bar, high - bar), n, f"{what} (share minus a {bar:.0%} bar)")


def compare_seeds(claim_id: int, differences: Sequence[float], what: str, unit: str = "points",
                  scale: float = 100.0) -> Verdict:
    """Verdict from one paired difference per seed (signed as the notes say), with a t interval."""
    effect, low, high = mean_interval(differences)
    return judge(claim_id, effect, (low, high), len(differences), what, unit, scale)


def compare_speed(claim_id: int, slow_seconds: Sequence[float], fast_seconds: Sequence[float], what: str,
                  unit: str = "x speed-up") -> Verdict:
    """Verdict on 'the fast way is faster' (or any 'ratio > 1'): the ratio minus 1, from repeated measurements."""
    ratio, low, high = ratio_interval(slow_seconds, fast_seconds)
    return judge(claim_id, ratio - 1, (low - 1, high - 1), min(len(slow_seconds), len(fast_seconds)), what,
                 unit=unit, scale=1.0, offset=1.0)


def weakest_part(claim_id: int, parts: dict, claim_word: str = "parts") -> Verdict:
    """One verdict for a claim made of several parts (all must hold): the weakest part decides.

    Order: any contradicted part (the one whose interval lies furthest below zero), else any part not
    shown (lowest lower bound), else the supported part with the lowest lower bound. Its `what` names
    the deciding part and lists the others with their own intervals. All parts must share units.
    """
    order = {CONTRADICTED: 0, NOT_SHOWN: 1, SUPPORTED: 2}
    name, v = min(parts.items(), key=lambda kv: (order[kv[1].verdict],
                                                 kv[1].ci[1] if kv[1].verdict == CONTRADICTED else kv[1].ci[0]))
    others = "; ".join(f"{n}: {o.shown(o.effect)} ({o.shown(o.ci[0])} to {o.shown(o.ci[1])}) → {o.verdict}"
                       for n, o in parts.items() if n != name)
    what = (f"{v.what} (the weakest of the claim's {len(parts)} {claim_word} decides; "
            f"the other{'s' if len(parts) > 2 else ''}: {others})")
    return judge(claim_id, v.effect, v.ci, v.n, what, v.unit, v.scale, v.offset, v.runs, v.aside)


def _show(markdown: str) -> None:
    """Markdown in a notebook, plain text elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
        if get_ipython() is not None:
            display(Markdown(markdown))
            return
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        pass
    print(markdown)


def report(verdict: Verdict, notes_say: str = "") -> Verdict:
    """Record the verdict in the lesson's `claims` list and show its sentence (Markdown in a notebook)."""
    entries = [e for e in RECORDED.get("claims", []) if e["id"] != verdict.id]
    record("claims", sorted(entries + [verdict.record_entry()], key=lambda e: e["id"]))
    _show(verdict.sentence(notes_say))
    return verdict


def summary_table(entries: Sequence[dict]) -> str:
    """A Markdown table of recorded verdicts: claim, what was measured, effect with interval, n, verdict."""
    lines = ["| claim | the notes say | measured | effect (95 % interval) | n | verdict |", "|---|---|---|---|---|---|"]
    for e in entries:
        v = Verdict(**{**e, "ci": tuple(e["ci"])})
        measured = f"{v.what} (beside it, {v.aside})" if v.aside else v.what
        lines.append(f"| {v.id} | {CLAIMS[v.id].text} | {measured} | {v.shown(v.effect)} ({v.shown(v.ci[0])} to "
                     f"{v.shown(v.ci[1])}) {v.unit} | {v.n:,} | **{v.verdict}** |")
    return "\n".join(lines)


def show_summary() -> str:
    """Show this lesson's verdicts as a table (what the run found next to what the notes say)."""
    table = summary_table(RECORDED.get("claims", []))
    _show(table)
    return table


def verdict_cells(nb) -> dict[int, str]:
    """Claim id -> id of the executed notebook's cell whose output states that claim's verdict."""
    found = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/markdown", "")
            text = "".join(text) if isinstance(text, list) else text
            if text.startswith("**Claim ") and cell.get("id"):
                found[int(text[len("**Claim "):].split("**", 1)[0])] = cell["id"]
    return found


def ledger(lessons: Sequence[tuple[str, list, dict, str | None]]) -> list[dict]:
    """Every claim of the registry with this run's verdict, from (lesson, claims record, verdict cells, html).

    A claim no lesson of the run measured is listed as `not measured in this run`, so the ledger
    always has all 29 rows; `link` points at the cell that states a verdict.
    """
    measured = {}
    for lesson, entries, cells, html in lessons:
        for e in entries or []:
            link = f"{html}#cell-id={cells[e['id']]}" if html and e["id"] in cells else html
            measured[e["id"]] = {**e, "lesson": lesson, "link": link}
    return [measured.get(cid, {"id": cid, "lesson": None, "verdict": "not measured in this run"})
            | {"claim": claim.text, "source": claim.source} for cid, claim in sorted(CLAIMS.items())]
