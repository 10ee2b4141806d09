//! The report of a reproduce run: checks, markdown tables and an SVG plot, all from the measured outcomes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::experiment::Resolved;
use super::{Group, Outcome, Point, BASE, FINETUNED, KEEP_ALL};

/// What the run checks about itself.
pub struct Checks {
    /// Keep everything gave exactly the fine-tune's metrics on every task.
    pub keep_all_exact: bool,
    pub keep_all_detail: Vec<String>,
}

/// Metrics that describe the run rather than the model (never compared).
fn is_bookkeeping(key: &str) -> bool {
    key.ends_with("seconds")
}

fn outcome<'a>(outcomes: &'a [Outcome], point: usize, task: &str) -> Option<&'a Outcome> {
    outcomes.iter().find(|o| o.point == point && o.task == task)
}

fn index_of(points: &[Point], name: &str) -> Option<usize> {
    points
        .iter()
        .position(|p| p.variant.name == name && p.group == Group::Reference)
}

pub fn checks(r: &Resolved, points: &[Point], outcomes: &[Outcome]) -> Checks {
    let mut detail = Vec::new();
    let (Some(ft), Some(keep)) = (index_of(points, FINETUNED), index_of(points, KEEP_ALL)) else {
        return Checks {
            keep_all_exact: false,
            keep_all_detail: vec!["the reference rows were not run".into()],
        };
    };
    for t in &r.tasks {
        match (
            outcome(outcomes, ft, &t.name),
            outcome(outcomes, keep, &t.name),
        ) {
            (Some(a), Some(b)) if a.m.error.is_none() && b.m.error.is_none() => {
                for (k, v) in &a.m.metrics {
                    if is_bookkeeping(k) {
                        continue;
                    }
                    match b.m.metrics.get(k) {
                        Some(w) if w.to_bits() == v.to_bits() => {}
                        other => detail.push(format!(
                            "{}: {k} fine-tuned {v} vs keep everything {}",
                            t.name,
                            other
                                .map(|w| w.to_string())
                                .unwrap_or_else(|| "missing".into())
                        )),
                    }
                }
            }
            _ => detail.push(format!("{}: a reference row failed", t.name)),
        }
    }
    Checks {
        keep_all_exact: detail.is_empty(),
        keep_all_detail: detail,
    }
}

/// The headline value of a point on a task (metric × scale), if measured.
fn headline(r: &Resolved, outcomes: &[Outcome], point: usize, task: &str) -> Option<f64> {
    let t = r.tasks.iter().find(|t| t.name == task)?;
    let o = outcome(outcomes, point, task)?;
    o.m.metrics.get(&t.metric).map(|v| v * t.scale)
}

/// Mean headline over all tasks, None unless every task was measured.
fn average(r: &Resolved, outcomes: &[Outcome], point: usize) -> Option<f64> {
    let vals: Option<Vec<f64>> = r
        .tasks
        .iter()
        .map(|t| headline(r, outcomes, point, &t.name))
        .collect();
    vals.map(|v| v.iter().sum::<f64>() / v.len() as f64)
}

/// Mean real ratio over the point's archives, and whether they spread more than 1%.
fn real_ratio(outcomes: &[Outcome], point: usize) -> Option<(f64, f64, f64)> {
    let v: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.point == point)
        .filter_map(|o| o.m.real_ratio)
        .collect();
    if v.is_empty() {
        return None;
    }
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    Some((v.iter().sum::<f64>() / v.len() as f64, lo, hi))
}

/// Mean whole-archive ratio (the archive file against the fine-tune's folder) over the point's archives.
fn whole_ratio(outcomes: &[Outcome], point: usize) -> Option<f64> {
    let v: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.point == point)
        .filter_map(|o| o.m.whole_ratio)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// "real R×" over the compressed tensors, and the whole files' ratio when measured.
fn fmt_bytes(outcomes: &[Outcome], point: usize) -> String {
    let mut s = format!("real {}", fmt_ratio(real_ratio(outcomes, point)));
    if let Some(w) = whole_ratio(outcomes, point) {
        let _ = write!(s, "; whole archive file {w:.1}×");
    }
    s
}

fn fmt_ratio(x: Option<(f64, f64, f64)>) -> String {
    match x {
        None => "—".into(),
        Some((m, lo, hi)) if hi > lo * 1.01 => format!("{m:.1}× ({lo:.1}–{hi:.1})"),
        Some((m, _, _)) => format!("{m:.1}×"),
    }
}

fn fmt_val(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "—".into())
}

fn cell(r: &Resolved, outcomes: &[Outcome], point: usize, task: &str) -> String {
    match outcome(outcomes, point, task) {
        Some(o) if o.m.error.is_some() => "failed".into(),
        _ => fmt_val(headline(r, outcomes, point, task)),
    }
}

fn row(r: &Resolved, points: &[Point], outcomes: &[Outcome], i: usize, label: &str) -> String {
    let p = &points[i];
    let mut s = format!(
        "| {label} | {} | {} |",
        p.target
            .map(|t| format!("{t}×"))
            .unwrap_or_else(|| "—".into()),
        if p.variant.name == FINETUNED {
            "1×".into()
        } else if p.variant.name == BASE {
            "—".into()
        } else {
            fmt_ratio(real_ratio(outcomes, i))
        }
    );
    for t in &r.tasks {
        let _ = write!(s, " {} |", cell(r, outcomes, i, &t.name));
    }
    let _ = write!(s, " {} |", fmt_val(average(r, outcomes, i)));
    s
}

fn table_head(r: &Resolved, first: &str) -> String {
    let mut s = format!("| {first} | target | real ratio |");
    let mut sep = String::from("|---|---|---|");
    for t in &r.tasks {
        let _ = write!(s, " {} |", t.name);
        sep.push_str("---:|");
    }
    s.push_str(" Avg |");
    sep.push_str("---:|");
    format!("{s}\n{sep}\n")
}

fn find(points: &[Point], group: Group, name: &str, target: Option<f64>) -> Option<usize> {
    points.iter().position(|p| {
        p.group == group
            && p.variant.name == name
            && match (p.target, target) {
                (Some(a), Some(b)) => (a - b).abs() < 1e-9,
                (None, None) => true,
                _ => false,
            }
    })
}

/// One sentence per ratio: UltraDelta's average against the fine-tuned average and DARE at the same bytes.
fn comparisons(r: &Resolved, points: &[Point], outcomes: &[Outcome]) -> Vec<String> {
    let ft = index_of(points, FINETUNED).and_then(|i| average(r, outcomes, i));
    let mut out = Vec::new();
    for &ratio in &r.ratios {
        for ud in ["ultradelta", "paper"] {
            let Some(u) = find(points, Group::Budget, ud, Some(ratio)) else {
                continue;
            };
            let Some(ua) = average(r, outcomes, u) else {
                out.push(format!(
                    "At {ratio}×: {} did not complete on every task.",
                    points[u].variant.label
                ));
                continue;
            };
            let mut s = format!(
                "At {ratio}× ({}): {} averages **{ua:.2}**",
                fmt_bytes(outcomes, u),
                points[u].variant.label
            );
            if let Some(f) = ft {
                let _ = write!(s, "; the fine-tunes {f:.2} ({:+.2})", ua - f);
            }
            match find(points, Group::Budget, "dare", Some(ratio)) {
                Some(d) => match average(r, outcomes, d) {
                    Some(da) => {
                        let _ = write!(
                            s,
                            "; DARE at the same real bytes ({}) {da:.2} ({:+.2} for UltraDelta)",
                            fmt_bytes(outcomes, d),
                            ua - da
                        );
                    }
                    None => s.push_str("; DARE did not complete on every task"),
                },
                None => s.push_str("; DARE not in this run"),
            }
            s.push('.');
            out.push(s);
        }
    }
    out
}

/// Variants that are baselines (other methods), against which the project default is checked on every task.
const BASELINES: [&str; 6] = [
    "dare",
    "magnitude",
    "lowrank",
    "compeft",
    "bitdelta",
    "quant-1bit",
];

/// Where a baseline does better than the project default (`ultradelta`) on a task at no more real bytes: at each
/// ratio of the grid for the budget rows, and for a fixed-ratio baseline at the largest ratio of the grid its own
/// real ratio reaches (one it does not reach is said so, not compared). One sentence per case, then one line on
/// which baselines and ratios were checked; empty without a default or a baseline in the run.
fn baseline_shortfalls(r: &Resolved, points: &[Point], outcomes: &[Outcome]) -> Vec<String> {
    let mut out = Vec::new();
    let mut checked = Vec::new();
    let one_example = |task: &str| -> String {
        let t = r.tasks.iter().find(|t| t.name == task);
        let n = outcomes
            .iter()
            .find(|o| o.task == task)
            .and_then(|o| o.m.metrics.get("n"));
        match (t, n) {
            (Some(t), Some(&n)) if t.metric == "accuracy" && n > 0.0 => {
                format!("; one of its {n} test examples is {:.2}", t.scale / n)
            }
            _ => String::new(),
        }
    };
    let compare = |at: f64, d: usize, b: usize, note: &str| -> Vec<String> {
        let mut lines = Vec::new();
        for t in &r.tasks {
            let (Some(dv), Some(bv)) = (
                headline(r, outcomes, d, &t.name),
                headline(r, outcomes, b, &t.name),
            ) else {
                continue;
            };
            if bv > dv + 1e-9 {
                lines.push(format!(
                    "At {at}×, {}: {}{note} {bv:.2} against the project default's {dv:.2} ({:+.2}{}).",
                    t.name,
                    points[b].variant.label,
                    dv - bv,
                    one_example(&t.name)
                ));
            }
        }
        lines
    };
    let mut shortfalls = 0;
    for (b, p) in points.iter().enumerate() {
        if !BASELINES.contains(&p.variant.name.as_str()) {
            continue;
        }
        // The default's point to compare with: at the same ratio (budget rows), or at the largest ratio of the
        // grid the baseline's own real ratio reaches (fixed rows).
        let against = match (p.group, p.target) {
            (Group::Budget, Some(ratio)) => find(points, Group::Budget, "ultradelta", Some(ratio))
                .map(|d| (ratio, d, String::new())),
            (Group::Fixed, _) => {
                let Some((own, _, _)) = real_ratio(outcomes, b) else {
                    continue;
                };
                let at = r
                    .ratios
                    .iter()
                    .copied()
                    .filter(|&x| x <= own * 1.01)
                    .reduce(f64::max)
                    .and_then(|x| {
                        find(points, Group::Budget, "ultradelta", Some(x)).map(|d| (x, d))
                    });
                if at.is_none() {
                    out.push(format!(
                        "{} ({own:.1}× real) takes more bytes than the project default at every ratio of the \
                         grid: not compared.",
                        p.variant.label
                    ));
                }
                at.map(|(x, d)| (x, d, format!(" (its own {own:.1}× real)")))
            }
            _ => None,
        };
        let Some((at, d, note)) = against else {
            continue;
        };
        let lines = compare(at, d, b, &note);
        shortfalls += lines.len();
        out.extend(lines);
        if !checked.contains(&p.variant.label) {
            checked.push(p.variant.label.clone());
        }
    }
    if checked.is_empty() {
        return out;
    }
    out.push(if shortfalls == 0 {
        format!(
            "At every ratio of the grid the project default is at least as good as every baseline checked ({}) \
             on every task.",
            checked.join(", ")
        )
    } else {
        format!(
            "Baselines checked: {}; elsewhere the project default is at least as good on every task.",
            checked.join(", ")
        )
    });
    out
}

/// A `###` section of one bullet per line, nothing when there are no lines.
fn bullets(s: &mut String, heading: &str, lines: Vec<String>) {
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(s, "### {heading}\n");
    for l in lines {
        let _ = writeln!(s, "- {l}");
    }
    s.push('\n');
}

#[allow(clippy::too_many_arguments)]
pub fn markdown(
    r: &Resolved,
    points: &[Point],
    outcomes: &[Outcome],
    checks: &Checks,
    quick: bool,
    generated: bool,
    seconds: f64,
    stamp: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Reproduction report: {}\n", r.name);
    if !r.description.is_empty() {
        let _ = writeln!(s, "{}\n", r.description);
    }
    if let Some(shape) = &r.synthetic {
        let _ = writeln!(
            s,
            "> **Synthetic pairs.** The base and fine-tunes of this run are generated ({shape}: the real \
             model's tensor names and shapes, random values with a partly low-rank delta), and every task is \
             measured by the weight-fidelity evaluator, not by the task's own data. It exercises the family's \
             preset and the whole pipeline on real names; it says nothing about quality on the real models.\n"
        );
    }
    if generated {
        s.push_str(
            "> **Generated testbed.** The models and texts of this run are generated (tiny random models, \
             generated texts); it checks the harness's code path and says nothing about the method's quality.\n\n",
        );
    }
    let _ = writeln!(
        s,
        "Run {stamp}{}, {} evaluations in {:.1} min. Raw numbers: `results.csv`; configuration, machine and \
         testbed checksums: `provenance.json`.\n",
        if quick { " (`--quick` grid)" } else { "" },
        outcomes.len(),
        seconds / 60.0
    );
    let _ = writeln!(s, "Headline metric per task (× scale):");
    for t in &r.tasks {
        let _ = writeln!(s, "- **{}**: `{}` × {}", t.name, t.metric, t.scale);
    }
    s.push_str(
        "\nEvery compressed model is a real archive written by `ultradelta compress` and rebuilt by \
         `ultradelta apply`; *real ratio* is its measured size against 16-bit over the compressed tensors \
         (mean over the tasks' archives, range when they differ by more than 1%); the *whole archive file* \
         ratio (the archive file against the fine-tune's folder, tensors kept losslessly included) is in the \
         sentences below the table and in the ablation table. Budget rows were compressed with \
         `--target-ratio`, so methods in one block cost the same bytes.\n\n",
    );

    let _ = writeln!(
        s,
        "Keep everything reproduces the fine-tuned metrics exactly: **{}**{}\n",
        if checks.keep_all_exact { "yes" } else { "NO" },
        if checks.keep_all_detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", checks.keep_all_detail.join("; "))
        }
    );

    s.push_str("## Quality at each ratio\n\n");
    s.push_str(&table_head(r, "Method"));
    for (i, p) in points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.group == Group::Reference)
    {
        let _ = writeln!(s, "{}", row(r, points, outcomes, i, &p.variant.label));
    }
    for &ratio in &r.ratios {
        let at = |p: &Point| {
            p.group == Group::Budget && p.target.is_some_and(|t| (t - ratio).abs() < 1e-9)
        };
        if !points.iter().any(at) {
            continue;
        }
        let _ = writeln!(
            s,
            "| **{ratio}×** | | | {}|",
            "| ".repeat(r.tasks.len() + 1)
        );
        for (i, p) in points.iter().enumerate() {
            if p.group == Group::Budget && p.target.is_some_and(|t| (t - ratio).abs() < 1e-9) {
                let _ = writeln!(s, "{}", row(r, points, outcomes, i, &p.variant.label));
            }
        }
    }
    if points.iter().any(|p| p.group == Group::Fixed) {
        let _ = writeln!(
            s,
            "| **own ratio** | | | {}|",
            "| ".repeat(r.tasks.len() + 1)
        );
        for (i, p) in points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.group == Group::Fixed)
        {
            let _ = writeln!(s, "{}", row(r, points, outcomes, i, &p.variant.label));
        }
    }
    s.push('\n');
    bullets(
        &mut s,
        "UltraDelta against the fine-tunes and DARE at equal real bytes",
        comparisons(r, points, outcomes),
    );
    bullets(
        &mut s,
        "The project default against every baseline, task by task, at no more real bytes",
        baseline_shortfalls(r, points, outcomes),
    );
    s.push_str("![quality against real ratio](quality-vs-ratio.svg)\n\n");

    if points.iter().any(|p| p.group == Group::Ablation) {
        s.push_str("## Ablation ladder (s = 0.97, b = 4, no byte budget)\n\n");
        s.push_str(
            "The paper's ladder DARE 97% → +DAC → +MSA → +TNGR, then variations measured to choose the \
             project's defaults. γ is TNGR's factor per task (1 when off).\n\n",
        );
        s.push_str(
            &table_head(r, "Step")
                .replace("| Avg |", "| Avg | whole archive | γ per task |")
                .replace("---:|\n", "---:|---:|---|\n"),
        );
        for (i, p) in points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.group == Group::Ablation)
        {
            let gammas: Vec<String> = r
                .tasks
                .iter()
                .map(|t| {
                    outcome(outcomes, i, &t.name)
                        .and_then(|o| o.m.gamma)
                        .map(|g| format!("{g:.3}"))
                        .unwrap_or_else(|| "—".into())
                })
                .collect();
            let whole: Vec<f64> = outcomes
                .iter()
                .filter(|o| o.point == i)
                .filter_map(|o| o.m.whole_ratio)
                .collect();
            let whole = if whole.is_empty() {
                "—".to_string()
            } else {
                format!("{:.1}×", whole.iter().sum::<f64>() / whole.len() as f64)
            };
            let _ = writeln!(
                s,
                "{} {whole} | {} |",
                row(r, points, outcomes, i, &p.variant.label),
                gammas.join(", ")
            );
        }
        s.push('\n');
    }

    s.push_str("## Every metric, per task\n\n");
    for t in &r.tasks {
        let keys: Vec<String> = {
            let mut k: Vec<String> = outcomes
                .iter()
                .filter(|o| o.task == t.name)
                .flat_map(|o| o.m.metrics.keys().cloned())
                .filter(|k| {
                    !is_bookkeeping(k)
                        && k != "n"
                        && k != "max_tokens"
                        && k != "correct"
                        && k != "probe_train"
                })
                .collect();
            k.sort();
            k.dedup();
            k
        };
        let n = outcomes
            .iter()
            .find(|o| o.task == t.name)
            .and_then(|o| o.m.metrics.get("n"))
            .map(|n| format!(" (n = {n} examples)"))
            .unwrap_or_default();
        let _ = writeln!(s, "### {}{n}\n", t.name);
        let _ = write!(s, "| Method | target | real ratio |");
        for k in &keys {
            let _ = write!(s, " {k} |");
        }
        let _ = writeln!(s, " compress s | apply s | eval s |");
        let _ = writeln!(
            s,
            "|---|---|---|{}---:|---:|---:|",
            "---:|".repeat(keys.len())
        );
        for (i, p) in points.iter().enumerate() {
            let Some(o) = outcome(outcomes, i, &t.name) else {
                continue;
            };
            let _ = write!(
                s,
                "| {} | {} | {} |",
                p.variant.label,
                p.target
                    .map(|x| format!("{x}×"))
                    .unwrap_or_else(|| "—".into()),
                o.m.real_ratio
                    .map(|x| format!("{x:.1}×"))
                    .unwrap_or_else(|| "—".into())
            );
            for k in &keys {
                let _ = write!(
                    s,
                    " {} |",
                    o.m.metrics
                        .get(k)
                        .map(|v| format!("{v:.4}"))
                        .unwrap_or_else(|| "—".into())
                );
            }
            let sec = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "—".into());
            let _ = writeln!(
                s,
                " {} | {} | {} |",
                sec(o.m.compress_seconds),
                sec(o.m.apply_seconds),
                sec(o.m.eval_seconds)
            );
        }
        s.push('\n');
    }

    let failures: Vec<&Outcome> = outcomes.iter().filter(|o| o.m.error.is_some()).collect();
    if !failures.is_empty() {
        s.push_str("## Failures\n\n");
        for o in failures {
            let _ = writeln!(
                s,
                "- {} on {}: {}",
                points[o.point].variant.label,
                o.task,
                o.m.error.as_deref().unwrap_or("")
            );
        }
        s.push('\n');
    }
    s
}

/// The few lines printed at the end of a run.
pub fn summary(r: &Resolved, points: &[Point], outcomes: &[Outcome], checks: &Checks) -> String {
    let mut s = String::new();
    let _ = writeln!(s);
    for (i, p) in points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.group == Group::Reference)
    {
        let _ = writeln!(
            s,
            "{:<40} avg {}",
            p.variant.label,
            fmt_val(average(r, outcomes, i))
        );
    }
    for c in comparisons(r, points, outcomes) {
        let _ = writeln!(s, "{}", c.replace("**", ""));
    }
    let _ = write!(
        s,
        "keep everything reproduces the fine-tuned metrics exactly: {}",
        if checks.keep_all_exact { "yes" } else { "NO" }
    );
    s
}

const COLORS: [&str; 8] = [
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Average quality against real ratio (log scale): a line per plotted budget variant, a marker per fixed
/// variant, dashed lines for the fine-tunes and the base.
pub fn svg(r: &Resolved, points: &[Point], outcomes: &[Outcome]) -> String {
    let (w, h, ml, mr, mt, mb) = (760.0, 460.0, 60.0, 230.0, 30.0, 50.0);
    let mut series: BTreeMap<String, (String, Vec<(f64, f64)>)> = BTreeMap::new();
    let mut markers: Vec<(String, f64, f64)> = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let (Some((x, _, _)), Some(y)) = (real_ratio(outcomes, i), average(r, outcomes, i)) else {
            continue;
        };
        match p.group {
            Group::Budget if p.variant.plot => series
                .entry(p.variant.name.clone())
                .or_insert_with(|| (p.variant.label.clone(), Vec::new()))
                .1
                .push((x, y)),
            Group::Budget | Group::Fixed => markers.push((p.variant.label.clone(), x, y)),
            _ => {}
        }
    }
    let ft = index_of(points, FINETUNED).and_then(|i| average(r, outcomes, i));
    let base = index_of(points, BASE).and_then(|i| average(r, outcomes, i));
    let xs: Vec<f64> = series
        .values()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .chain(markers.iter().map(|m| m.1))
        .collect();
    let ys: Vec<f64> = series
        .values()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .chain(markers.iter().map(|m| m.2))
        .chain(ft)
        .chain(base)
        .collect();
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    if xs.is_empty() || ys.is_empty() {
        out.push_str("<text x=\"20\" y=\"40\">no budget points measured</text>\n</svg>\n");
        return out;
    }
    let (mut x0, mut x1) = (
        xs.iter().cloned().fold(f64::INFINITY, f64::min).ln(),
        xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max).ln(),
    );
    if x1 - x0 < 0.1 {
        x0 -= 0.2;
        x1 += 0.2;
    }
    let pad = (x1 - x0) * 0.05;
    let (x0, x1) = (x0 - pad, x1 + pad);
    let (mut y0, mut y1) = (
        ys.iter().cloned().fold(f64::INFINITY, f64::min),
        ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    );
    if y1 - y0 < 1e-9 {
        y0 -= 1.0;
        y1 += 1.0;
    }
    let ypad = (y1 - y0) * 0.06;
    let (y0, y1) = (y0 - ypad, y1 + ypad);
    let px = |x: f64| ml + (x.ln() - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| mt + (y1 - y) / (y1 - y0) * (h - mt - mb);
    let _ = writeln!(
        out,
        "<rect x=\"{ml}\" y=\"{mt}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>",
        w - ml - mr,
        h - mt - mb
    );
    for tick in [
        2.0, 5.0, 10.0, 16.0, 20.0, 32.9, 50.9, 100.0, 132.5, 200.0, 500.0, 1000.0,
    ] {
        let lx = f64::ln(tick);
        if lx < x0 || lx > x1 {
            continue;
        }
        let x = px(tick);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{mt}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{tick}×</text>",
            h - mb,
            h - mb + 16.0
        );
    }
    for k in 0..=5 {
        let y = y0 + (y1 - y0) * k as f64 / 5.0;
        let _ = writeln!(
            out,
            "<line x1=\"{ml}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"#eee\"/><text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\">{y:.1}</text>",
            py(y),
            w - mr,
            ml - 6.0,
            py(y) + 4.0
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">real compression ratio vs 16-bit (log scale)</text>",
        ml + (w - ml - mr) / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        out,
        "<text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">average quality over {} tasks</text>",
        mt + (h - mt - mb) / 2.0,
        mt + (h - mt - mb) / 2.0,
        r.tasks.len()
    );
    let mut legend_y = mt + 10.0;
    let mut legend = |out: &mut String, color: &str, label: &str, dash: bool| {
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{2:.1}\" y2=\"{1:.1}\" stroke=\"{color}\" stroke-width=\"2\"{3}/><text x=\"{4:.1}\" y=\"{5:.1}\">{6}</text>",
            w - mr + 12.0,
            legend_y,
            w - mr + 36.0,
            if dash { " stroke-dasharray=\"5,4\"" } else { "" },
            w - mr + 42.0,
            legend_y + 4.0,
            esc(label)
        );
        legend_y += 18.0;
    };
    for (label, value, color) in [("fine-tuned", ft, "#000"), ("base", base, "#888")] {
        if let Some(v) = value {
            let _ = writeln!(
                out,
                "<line x1=\"{ml}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"{color}\" stroke-dasharray=\"5,4\"/>",
                py(v),
                w - mr
            );
            legend(&mut out, color, label, true);
        }
    }
    for (k, (_, (label, pts))) in series.iter_mut().enumerate() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = COLORS[k % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
            path.join(" ")
        );
        for &(x, y) in pts.iter() {
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{color}\"/>",
                px(x),
                py(y)
            );
        }
        legend(&mut out, color, label, false);
    }
    for (k, (label, x, y)) in markers.iter().enumerate() {
        let color = COLORS[(series.len() + k) % COLORS.len()];
        let (cx, cy) = (px(*x), py(*y));
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"8\" height=\"8\" fill=\"{color}\"/>",
            cx - 4.0,
            cy - 4.0
        );
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"8\" height=\"8\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            w - mr + 20.0,
            legend_y - 4.0,
            w - mr + 42.0,
            legend_y + 4.0,
            esc(label)
        );
        legend_y += 18.0;
    }
    out.push_str("</svg>\n");
    out
}

/// The illustration of a run: continuations of a few prompts by the base, the fine-tunes and their rebuilt
/// models at one point.
pub struct Shown {
    pub prompts: Vec<String>,
    /// The point whose rebuilt models are shown.
    pub point: usize,
    pub base: Vec<String>,
    pub tasks: Vec<ShownTask>,
}

/// One shown task: the fine-tune's and the rebuilt model's continuations, in prompt order.
pub struct ShownTask {
    pub task: String,
    pub finetuned: Vec<String>,
    pub rebuilt: Vec<String>,
}

/// A continuation as one table cell.
fn md_cell(s: &str) -> String {
    let t = s.trim().replace('|', "\\|").replace('\n', " ↵ ");
    if t.is_empty() {
        "*(empty)*".into()
    } else {
        t
    }
}

/// The report's illustration section: per prompt, base, fine-tune and rebuilt side by side.
pub fn illustration(r: &Resolved, points: &[Point], outcomes: &[Outcome], sh: &Shown) -> String {
    let p = &points[sh.point];
    let at = p.target.map(|t| format!(" at {t}×")).unwrap_or_default();
    let real = real_ratio(outcomes, sh.point)
        .map(|x| format!(" (real {})", fmt_ratio(Some(x))))
        .unwrap_or_default();
    let mut s = String::from("## Greedy continuations (an illustration, not a measurement)\n\n");
    let _ = writeln!(
        s,
        "Greedy decoding of a few chat prompts by the base, each shown fine-tune, and its model rebuilt from \
         **{}**{at}{real}. One sample each: it shows what the numbers above mean for text, it measures \
         nothing.\n",
        p.variant.label
    );
    for (i, prompt) in sh.prompts.iter().enumerate() {
        let _ = writeln!(s, "**Prompt:** {}\n", md_cell(prompt));
        s.push_str("| model | continuation |\n|---|---|\n");
        let get = |v: &[String]| v.get(i).map_or_else(|| "—".into(), |c| md_cell(c));
        let _ = writeln!(s, "| base | {} |", get(&sh.base));
        for t in &sh.tasks {
            let _ = writeln!(s, "| {} fine-tune | {} |", t.task, get(&t.finetuned));
            let _ = writeln!(s, "| {} rebuilt | {} |", t.task, get(&t.rebuilt));
        }
        s.push('\n');
    }
    let _ = r;
    s
}

/// Shifts every markdown heading one level down (`#` → `##`).
fn demote(md: &str) -> String {
    md.lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("#{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The report of a run over several families: a short head, the combined plot, then each family's report
/// (headings one level down, its plot from its folder).
pub fn combined_markdown(
    sections: &[(String, String)],
    generated: bool,
    seconds: f64,
    stamp: &str,
) -> String {
    let mut s = String::from("# Reproduction report: every testbed family\n\n");
    if generated {
        s.push_str(
            "> **Generated testbed.** Every model and text of this run is generated (a tiny random BERT and a \
             tiny random LLaMA); it checks the harness's code path and says nothing about the method's \
             quality.\n\n",
        );
    }
    let _ = writeln!(
        s,
        "Run {stamp}, {} families in {:.1} min. Each family has its own folder (`results.csv`, \
         `provenance.json`, `report.md`, plot); `results.csv` here holds every row with a `family` column.\n",
        sections.len(),
        seconds / 60.0
    );
    for (name, _) in sections {
        let _ = writeln!(s, "- [{name}]({name}/report.md)");
    }
    s.push_str("\n![quality against real ratio, one panel per family](quality-vs-ratio.svg)\n\n");
    for (name, md) in sections {
        let md = md.replace(
            "](quality-vs-ratio.svg)",
            &format!("]({name}/quality-vs-ratio.svg)"),
        );
        s.push_str(&demote(&md));
        s.push_str("\n\n");
    }
    s
}

/// The families' plots side by side in one SVG, each under its name.
pub fn combined_svg(panels: &[(String, String)]) -> String {
    let (w, h, title) = (760.0, 460.0, 28.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        w * panels.len() as f64,
        h + title
    );
    for (k, (name, svg)) in panels.iter().enumerate() {
        let x = w * k as f64;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"20\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{}</text>",
            x + w / 2.0,
            esc(name)
        );
        // The panel's own <svg> element, placed by x/y.
        let inner = svg.replacen("<svg ", &format!("<svg x=\"{x}\" y=\"{title}\" "), 1);
        out.push_str(&inner);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reproduce::experiment::{ResolvedTask, Variant};
    use crate::reproduce::Measured;

    fn variant(name: &str, plot: bool) -> Variant {
        Variant {
            name: name.into(),
            label: name.to_uppercase(),
            args: vec![],
            together: false,
            ratios: None,
            plot,
        }
    }

    fn setup() -> (Resolved, Vec<Point>) {
        let task = |n: &str| ResolvedTask {
            name: n.into(),
            finetuned: n.into(),
            evaluator: vec!["e".into(), "{model}".into()],
            metric: "acc".into(),
            scale: 100.0,
        };
        let r = Resolved {
            name: "t".into(),
            description: String::new(),
            file: "t.toml".into(),
            base: "b".into(),
            compress_args: vec![],
            tasks: vec![task("a"), task("b")],
            ratios: vec![50.9],
            budget: vec![variant("ultradelta", true), variant("dare", true)],
            fixed: vec![],
            ablation: vec![],
            vars: Default::default(),
            manifest: "testbed.json".into(),
            illustration: None,
            synthetic: None,
        };
        let points = crate::reproduce::plan(&r);
        (r, points)
    }

    fn measured(acc: f64, ratio: Option<f64>) -> Measured {
        let mut m = Measured {
            real_ratio: ratio,
            ..Measured::default()
        };
        m.metrics.insert("acc".into(), acc);
        m.metrics.insert("eval_seconds".into(), 1.0);
        m
    }

    fn outcomes(points: &[Point], keep_b: f64) -> Vec<Outcome> {
        let mut out = Vec::new();
        for (i, p) in points.iter().enumerate() {
            for (t, base_acc) in [("a", 0.9), ("b", 0.8)] {
                let acc = match (p.variant.name.as_str(), t) {
                    (BASE, _) => 0.2,
                    (KEEP_ALL, "b") => keep_b,
                    ("ultradelta", _) => base_acc - 0.01,
                    ("dare", _) => base_acc - 0.05,
                    _ => base_acc,
                };
                let ratio = p.target.map(|t| t * 1.001);
                out.push(Outcome {
                    point: i,
                    task: t.into(),
                    m: measured(acc, ratio),
                });
            }
        }
        out
    }

    #[test]
    fn keep_all_check_compares_bits_and_ignores_timings() {
        let (r, points) = setup();
        assert!(checks(&r, &points, &outcomes(&points, 0.8)).keep_all_exact);
        let c = checks(&r, &points, &outcomes(&points, 0.8 + 1e-12));
        assert!(!c.keep_all_exact);
        assert!(
            c.keep_all_detail[0].starts_with("b: acc"),
            "{:?}",
            c.keep_all_detail
        );
    }

    #[test]
    fn report_states_the_equal_bytes_comparison() {
        let (r, points) = setup();
        let o = outcomes(&points, 0.8);
        let c = checks(&r, &points, &o);
        let md = markdown(&r, &points, &o, &c, false, false, 60.0, "now");
        // Fine-tuned average 85, UltraDelta 84, DARE 80 (scale 100).
        assert!(
            md.contains("| Fine-tuned (uncompressed) | — | 1× | 90.00 | 80.00 | 85.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| ULTRADELTA | 50.9× | 51.0× | 89.00 | 79.00 | 84.00 |"),
            "{md}"
        );
        assert!(
            md.contains("averages **84.00**; the fine-tunes 85.00 (-1.00)"),
            "{md}"
        );
        assert!(md.contains("80.00 (+4.00 for UltraDelta)"), "{md}");
        assert!(md.contains("exactly: **yes**"));
        let svg = svg(&r, &points, &o);
        assert!(
            svg.starts_with("<svg")
                && svg.contains("polyline")
                && svg.trim_end().ends_with("</svg>")
        );
    }

    /// A baseline that beats the default on a task is named with both numbers; none: one sentence says so.
    #[test]
    fn baselines_beating_the_default_are_listed_task_by_task() {
        let (r, points) = setup();
        let mut o = outcomes(&points, 0.8);
        let lines = baseline_shortfalls(&r, &points, &o);
        assert_eq!(
            lines,
            vec![
                "At every ratio of the grid the project default is at least as good as every baseline checked \
                 (DARE) on every task."
                    .to_string()
            ]
        );
        let dare = points
            .iter()
            .position(|p| p.variant.name == "dare")
            .unwrap();
        for x in o.iter_mut().filter(|x| x.point == dare && x.task == "b") {
            x.m.metrics.insert("acc".into(), 0.795);
        }
        let lines = baseline_shortfalls(&r, &points, &o);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0],
            "At 50.9×, b: DARE 79.50 against the project default's 79.00 (-0.50)."
        );
        assert!(
            lines[1].starts_with("Baselines checked: DARE;"),
            "{lines:?}"
        );
        let c = checks(&r, &points, &o);
        let md = markdown(&r, &points, &o, &c, false, false, 60.0, "now");
        assert!(md.contains("- At 50.9×, b: DARE 79.50"), "{md}");
    }

    #[test]
    fn combined_report_has_a_section_per_family_and_a_panel_each() {
        let (r, points) = setup();
        let o = outcomes(&points, 0.8);
        let c = checks(&r, &points, &o);
        let md = markdown(&r, &points, &o, &c, false, false, 60.0, "now");
        let sections = vec![
            ("testbed".to_string(), md.clone()),
            ("llama".to_string(), md),
        ];
        let all = combined_markdown(&sections, true, 120.0, "now");
        assert!(all.starts_with("# Reproduction report: every testbed family"));
        assert!(all.contains("Generated testbed"));
        assert_eq!(
            all.matches("\n## Reproduction report: t\n").count(),
            2,
            "{all}"
        );
        assert!(all.contains("### Quality at each ratio"));
        assert!(
            all.contains("](testbed/quality-vs-ratio.svg)")
                && all.contains("](llama/quality-vs-ratio.svg)")
        );
        let one = svg(&r, &points, &o);
        let both = combined_svg(&[("testbed".into(), one.clone()), ("llama".into(), one)]);
        assert_eq!(both.matches("<svg ").count(), 3);
        assert!(both.contains("<svg x=\"760\" y=\"28\" "), "{both}");
        assert!(both.contains(">llama</text>") && both.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn illustration_section_puts_models_side_by_side() {
        let (r, points) = setup();
        let o = outcomes(&points, 0.8);
        let at = points
            .iter()
            .position(|p| p.variant.name == "ultradelta")
            .unwrap();
        let sh = Shown {
            prompts: vec!["Hi | there".into()],
            point: at,
            base: vec!["hello".into()],
            tasks: vec![ShownTask {
                task: "a".into(),
                finetuned: vec!["line one\nline two".into()],
                rebuilt: vec![],
            }],
        };
        let s = illustration(&r, &points, &o, &sh);
        assert!(s.contains("an illustration, not a measurement"));
        assert!(s.contains("**ULTRADELTA** at 50.9× (real 51.0×)"), "{s}");
        assert!(s.contains("**Prompt:** Hi \\| there"), "{s}");
        assert!(s.contains("| base | hello |"));
        assert!(s.contains("| a fine-tune | line one ↵ line two |"));
        assert!(s.contains("| a rebuilt | — |"));
    }
}
