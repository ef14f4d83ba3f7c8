"""The report's bias flags, in words, from the family of tests of ``comparisons``.

Three kinds of flag, each a rejected hypothesis after Holm's procedure over every comparison of
the split: a *subgroup gap* (a group's AUROC, sensitivity or specificity below the rest of the
split's), a *confounder* (the share of the positive class differs between the groups of an
attribute, so a model can learn the attribute instead of the finding) and a *score shift* (within
each class the model's score tells a group's images from the others); a confounder with a score
shift is a *possible shortcut*. ``bias_summary`` is the ``bias`` block of ``metrics.json``: the
flags, every comparison made with its p-values, and what the control guarantees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from medxfer.pipeline.evaluation.schema import Bias, BiasFlag, Split, Subgroup
from medxfer.pipeline.evaluation.wording import number, p_value, percent, with_interval
from medxfer.pipeline.statistics.comparisons import MIN_CLASS_PATIENTS, MIN_FLAG_GAP, MIN_GROUP_PATIENTS, Hypothesis

NAMES = {"auroc": "AUROC", "sensitivity": "Sensitivity", "specificity": "Specificity"}
CONTROL = "Holm"


def guarantee(comparisons: int, alpha: float) -> str:
    """What Holm's procedure promises for a family of ``comparisons`` tests, in words."""
    if not comparisons:
        return "No comparison was large enough to test, so nothing could be flagged."
    return (f"{comparisons} comparison(s) were tested together (subgroup gaps against the rest of the split, "
            f"confounding, score shifts), with Holm's procedure: when no group truly differs, the chance that this "
            f"report carries any flag is at most {percent(alpha, spaced=False)}. Groups under {MIN_GROUP_PATIENTS} "
            f"patients, or under {MIN_CLASS_PATIENTS} patients of a class a metric counts, are shown but never flagged; "
            f"a performance gap is flagged only when it is also at least {number(MIN_FLAG_GAP, 2, typeset=False)}.")


def _figure(entry: Subgroup, metric: str) -> str:
    """A group's figure with its interval, as plain text: "0.710 (0.600–0.820)"."""
    return with_interval(entry[metric], entry["ci"].get(metric), typeset=False)


def _listing(pairs: Iterable[tuple[str, str]]) -> str:
    """Group names with a value, for a sentence: "AP 38%, PA 66%"; "F, <18: 100%; F, 18-39: 18%"
    when a name holds a comma itself (the groups of an intersection), so that it reads as one name."""
    pairs = list(pairs)
    if any("," in group for group, _ in pairs):
        return "; ".join(f"{group}: {value}" for group, value in pairs)
    return ", ".join(f"{group} {value}" for group, value in pairs)


def _gap_flag(split: str, h: Hypothesis, entry: Subgroup, comparisons: int) -> BiasFlag:
    rest = entry[h.metric] - h.test.difference
    sentence = (f"{NAMES[h.metric]} for {h.attribute} {h.group} is {_figure(entry, h.metric)}, "
                f"{number(abs(h.test.difference), typeset=False)} below the rest of the split's "
                f"{number(rest, typeset=False)} (n = {number(entry['n'], typeset=False)}"
                + (f", prevalence {percent(entry['prevalence'], spaced=False)}" if entry["prevalence"] is not None
                   else "")
                + f"); adjusted p = {p_value(h.adjusted_p)} over {comparisons} comparisons.")
    return {"split": split, "attribute": h.attribute, "group": h.group, "metric": h.metric, "kind": "gap",
            "value": entry[h.metric], "rest": rest, "gap": h.test.difference, "ci": [h.test.low, h.test.high],
            "p_value": h.test.p_value, "adjusted_p": h.adjusted_p, "sentence": sentence}


def _attribute_flag(split: str, attribute: str, groups: Mapping[str, Subgroup], positive: str,
                    confounded: list[Hypothesis], shifted: list[Hypothesis], comparisons: int) -> BiasFlag:
    known = {g: e for g, e in groups.items() if g != "unknown"}
    within = _listing((g, number(e["auroc"], typeset=False)) for g, e in known.items() if e["auroc"] is not None)
    shift_text = ""
    if shifted:
        named = _listing((h.group, _figure(known[h.group], "score_separation")) for h in shifted if h.group in known)
        shift_text = (f"Within each class the model's P({positive}) tells these {attribute} groups from the rest "
                      f"(AUROC {named}; 0.5 would be no difference; adjusted p = "
                      f"{p_value(min(h.adjusted_p for h in shifted))})")
    if confounded:
        shares = _listing((g, percent(e["prevalence"], spaced=False)) for g, e in known.items())
        sentence = (f"The share of {positive} differs by {attribute} ({shares}; adjusted p = "
                    f"{p_value(min(h.adjusted_p for h in confounded))} over {comparisons} comparisons): {attribute} is "
                    f"confounded with the label in this set, so a model can learn the {attribute} instead of the "
                    "finding, and the overall AUROC mixes both."
                    + (f" The AUROC within each {attribute} group ({within}) holds it fixed." if within else ""))
        if shifted:
            sentence += (f" {shift_text}: it may be using the {attribute} as a shortcut. Balance or stratify by it "
                         "when collecting data.")
        else:
            sentence += (f" Within each class the model's P({positive}) does not clearly differ by {attribute}, so "
                         "there is no sign it uses it as a shortcut.")
        kind = "shortcut" if shifted else "confounder"
    else:
        sentence = (f"{shift_text}, over {comparisons} comparisons, although the share of {positive} does not "
                    f"clearly differ by {attribute}: the same finding scores differently by {attribute}, so one "
                    f"threshold does not fit every {attribute} group alike.")
        kind = "score shift"
    tested = [*confounded, *shifted]
    return {"split": split, "attribute": attribute, "group": None, "metric": "confounding" if confounded else
            "score_separation", "kind": kind, "shortcut": bool(confounded and shifted), "value": None, "gap": None,
            "ci": None, "p_value": min(h.test.p_value for h in tested),
            "adjusted_p": min(h.adjusted_p for h in tested), "sentence": sentence}


def bias_summary(split: str, hypotheses: list[Hypothesis], entry: Split,
                 groups: Mapping[str, Sequence[str]], skipped: Mapping[str, str], positive: str | None,
                 level: float) -> Bias:
    """The ``bias`` block of ``metrics.json`` for ``split`` (whose metrics are ``entry``)."""
    comparisons = len(hypotheses)
    subgroups = entry["subgroups"]
    flags = [_gap_flag(split, h, subgroups[h.attribute][h.group], comparisons)
             for h in hypotheses if h.rejected and h.kind == "performance"]
    attribute_flags = []
    for attribute in groups:
        confounded = [h for h in hypotheses if h.rejected and h.kind == "prevalence" and h.attribute == attribute]
        shifted = [h for h in hypotheses if h.rejected and h.kind == "separation" and h.attribute == attribute]
        if positive is not None and (confounded or shifted):
            attribute_flags.append(_attribute_flag(split, attribute, subgroups[attribute], positive, confounded,
                                                   shifted, comparisons))
    alpha = 1 - level
    return {
        "split": split, "attributes": list(groups), "skipped": dict(skipped), "comparisons": comparisons,
        "control": CONTROL, "family_wise_error": alpha, "min_group_patients": MIN_GROUP_PATIENTS,
        "min_class_patients": MIN_CLASS_PATIENTS, "min_gap": MIN_FLAG_GAP, "guarantee": guarantee(comparisons, alpha),
        "tests": [{"kind": h.kind, "attribute": h.attribute, "group": h.group, "metric": h.metric,
                   "difference": h.test.difference, "p_value": h.test.p_value, "adjusted_p": h.adjusted_p,
                   "flagged": h.rejected} for h in hypotheses],
        "flagged_metrics": ["auroc", "sensitivity", "specificity"],
        "flags": attribute_flags + flags,
    }
