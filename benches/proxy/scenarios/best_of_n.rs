//! Scenario 3: the best-of-N critical path against the 50 ms demo, each size and judge against
//! its ideal: the same rounds of upstream calls made directly in the same windows.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::fleet::Services;
use crate::load::Load;
use crate::recorder::Recorder;
use crate::report::{failures_cell, ms, ms_diff, print_errors, print_table};
use crate::request::{chat_request, Target};
use crate::settings::Settings;
use crate::QUESTION;

pub fn run(load: &Load, services: &Services, settings: &Settings) -> Value {
    let direct = Target::chat("direct", &services.demo50, false);
    // (N, judge, judge calls): the default listwise judge at three sizes, then every other
    // strategy at N = 5. Each judges in one round of concurrent calls (pairwise plays a round
    // robin up to 6 candidates, a panel's members run at once).
    let levels: [(u32, Option<&'static str>, usize); 10] = [
        (1, None, 0),
        (5, None, 1),
        (16, None, 1),
        (5, Some("pointwise"), 5),
        (5, Some("pairwise"), 20),
        // Past `round_robin_max` (6), a knockout: 8, 4, 2, 1 matches, each in both orders.
        (16, Some("pairwise"), 30),
        (5, Some("panel"), 26),
        (5, Some("fuse"), 1),
        (5, Some("reward_model"), 1),
        (5, Some("consensus"), 0),
    ];
    let mut targets = vec![direct];
    for (n, judge, _) in levels {
        let label = format!("N={n} {}", judge.unwrap_or("listwise"));
        let target = Target::best_of(&label, &services.proxy50, n, false);
        targets.push(match judge {
            // Fusion is a mode, not a judge: the fuser writes the answer.
            Some("fuse") => target
                .with_header("x-best-of-n-mode", "fuse")
                .expecting("x-best-of-n-mode", "fuse")
                .shared(),
            Some(judge) => target.judged_by(judge).shared(),
            None => target.shared(),
        });
        // The ideal: the same rounds of calls made directly, measured in the same windows.
        let rounds = ideal_rounds(n as usize, judge.unwrap_or("listwise"));
        targets.push(Target::fan_out(
            &format!("{label} direct"),
            &services.demo50,
            rounds,
        ));
    }
    let recs = load.interleave(
        &targets,
        settings.bon_rate,
        settings.bon_window,
        settings.bon_rounds,
    );
    let call = &recs[0];
    let mut rows = vec![bon_row("direct call", "1", call, call)];
    let mut out = Vec::new();
    for ((n, judge, judge_calls), pair) in levels.iter().zip(recs[1..].chunks(2)) {
        let (r, ideal) = (&pair[0], &pair[1]);
        let shape = if *n >= 2 {
            format!("{n} + {judge_calls}")
        } else {
            "1".to_string()
        };
        let label = match judge {
            Some(judge) => format!("best-of-{n} {judge}"),
            None => format!("best-of-{n}"),
        };
        rows.push(bon_row(&label, &shape, r, ideal));
        print_errors(&label, r);
        print_errors(&format!("{label} direct"), ideal);
        out.push(json!({
            "n": n,
            "judge": judge.unwrap_or("listwise"),
            "upstream_calls": shape,
            "measured": r.to_json(),
            "ideal": ideal.to_json(),
            "ideal_us": {"p50": ideal.p(0.5), "p99": ideal.p(0.99)},
            "proxy_share_us": {
                "p50": r.p(0.5) as i64 - ideal.p(0.5) as i64,
                "p99": r.p(0.99) as i64 - ideal.p(0.99) as i64,
            },
        }));
    }
    let title = format!(
        "3. Best-of-N critical path, upstream 50 ms, {:.0} req/s, no-store (ideal = the \
         same upstream calls made directly: the N candidates at once, then the judge's calls \
         at once)",
        settings.bon_rate
    );
    let header = [
        "request",
        "upstream calls",
        "n",
        "fail",
        "ideal p50",
        "p50",
        "share p50",
        "ideal p99",
        "p99",
        "share p99",
    ];
    print_table(&title, &header, &rows);
    json!({
        "rate": settings.bon_rate,
        "upstream_latency_ms": 50,
        "direct_call": call.to_json(),
        "levels": out,
    })
}

/// One row of scenario 3: the proxy's figures against `ideal`, the same upstream calls made
/// directly.
fn bon_row(label: &str, calls: &str, r: &Recorder, ideal: &Recorder) -> Vec<String> {
    let ideal50 = ideal.p(0.5);
    let ideal99 = ideal.p(0.99);
    vec![
        label.to_string(),
        calls.to_string(),
        r.ok.to_string(),
        failures_cell(r),
        ms(ideal50),
        ms(r.p(0.5)),
        ms_diff(r.p(0.5), ideal50),
        ms(ideal99),
        ms(r.p(0.99)),
        ms_diff(r.p(0.99), ideal99),
    ]
}

/// The upstream calls of best-of-`n` judged by `judge`, as bodies: the candidates, then the
/// judge's prompts (listwise one with every candidate, pointwise one per candidate, pairwise
/// one per ordered pair, a panel all three), written like the built-in templates so that the
/// demo does the same judging work as behind the proxy.
pub fn ideal_rounds(n: usize, judge: &str) -> Vec<Vec<(&'static str, Bytes)>> {
    let chat = |body: Bytes| ("/chat/completions", body);
    let candidate = chat(Bytes::from(chat_request(QUESTION).to_string()));
    if n == 1 {
        return vec![vec![candidate]];
    }
    if judge == "consensus" {
        // No judge call: the candidates are the whole of the upstream work.
        return vec![vec![candidate; n]];
    }
    if judge == "reward_model" {
        // One TEI rerank call scoring every candidate.
        let texts = vec![JUDGED_ANSWER; n];
        let rerank =
            json!({"query": format!("user: {QUESTION}"), "texts": texts, "raw_scores": true});
        let rerank = ("/rerank", Bytes::from(rerank.to_string()));
        return vec![vec![candidate; n], vec![rerank]];
    }
    if judge == "pairwise" && n > PAIRWISE_ROUND_ROBIN_MAX {
        let mut rounds = vec![vec![candidate; n]];
        let mut left = n;
        while left > 1 {
            let prompt = chat(judge_prompt(2, "<winner>A</winner>"));
            rounds.push(vec![prompt; left / 2 * 2]);
            left = left.div_ceil(2);
        }
        return rounds;
    }
    let prompts = match judge {
        "listwise" => vec![judge_prompt(n, "<best>ID</best> <ranking>ID,...</ranking>")],
        "pointwise" => vec![judge_prompt(1, "<score>X</score>"); n],
        "pairwise" => vec![judge_prompt(2, "<winner>A</winner>"); n * (n - 1)],
        // The fuser's prompt shows every candidate and asks for an answer, not a verdict.
        "fuse" => vec![judge_prompt(n, "with the single best reply")],
        _ => ["listwise", "pointwise", "pairwise"]
            .into_iter()
            .flat_map(|member| ideal_rounds(n, member).pop().unwrap_or_default())
            .map(|(_, body)| body)
            .collect(),
    };
    vec![vec![candidate; n], prompts.into_iter().map(chat).collect()]
}

/// `judges.pairwise.round_robin_max`'s default: larger N play a knockout bracket.
const PAIRWISE_ROUND_ROBIN_MAX: usize = 6;

/// A demo-sized answer, as the judges of the ideal rounds are shown it.
const JUDGED_ANSWER: &str = "A balanced diet matters for several reasons:\n\
    1. It gives the body the energy and nutrients it needs.\n\
    2. It supports the immune system.\n\
    3. It lowers the risk of chronic disease.\n\
    In short, variety and moderation keep you healthy.";

/// A chat completion asking a judge about `shown` demo-sized answers.
fn judge_prompt(shown: usize, verdict: &str) -> Bytes {
    let rubric = "1. Answers what the user actually asked, directly and completely.\n";
    let mut prompt = format!(
        "You are an impartial judge. Decide which answer serves the user best.\n\n\
         <conversation>\n[user]\n{QUESTION}\n</conversation>\n\nJudge the answers against \
         these rubrics, most important first:\n{}\n",
        rubric.repeat(5)
    );
    for k in 0..shown {
        let id = match shown {
            2 => ["A", "B"][k].to_string(),
            _ => (k + 1).to_string(),
        };
        prompt.push_str(&format!(
            "<candidate id=\"{id}\">\n{JUDGED_ANSWER}\n</candidate>\n"
        ));
    }
    prompt.push_str(&format!("Think briefly, then answer {verdict}."));
    Bytes::from(chat_request(&prompt).to_string())
}
