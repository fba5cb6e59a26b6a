//! Stage histograms: recording, summaries, merging, reset, the table, the
//! `.hgrm` text and JSON.
#![cfg(feature = "metrics")]

use std::time::Duration;

use facepool::metrics::{Metrics, Snapshot, Stage};

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

#[test]
fn summaries_match_the_recorded_values() {
    let m = Metrics::new();
    // 1..=1000 ms: p50 = 500, p90 = 900, p99 = 990, p99.9 = 999.
    for i in 1..=1000 {
        m.record(Stage::Inference, ms(i));
    }
    m.record(Stage::Search, Duration::ZERO);
    m.record(Stage::EndToEnd, Duration::from_secs(2 * 3600));
    for b in [1, 2, 2, 32] {
        m.record_batch(b);
    }
    let s = m.snapshot();
    let inf = s.summary(Stage::Inference);
    assert_eq!(inf.count, 1000);
    let close = |got: f64, want: f64| (got - want).abs() <= want * 1e-3 + 1e-3;
    assert!(close(inf.min, 1.0) && close(inf.max, 1000.0), "{inf:?}");
    assert!(close(inf.mean, 500.5), "{inf:?}");
    for (got, want) in [
        (inf.p50, 500.0),
        (inf.p90, 900.0),
        (inf.p99, 990.0),
        (inf.p999, 999.0),
    ] {
        assert!(close(got, want), "{got} vs {want}");
    }
    // Zero records as the smallest value (1 µs); beyond an hour saturates.
    assert_eq!(s.summary(Stage::Search).count, 1);
    assert!(close(s.summary(Stage::Search).max, 0.001));
    assert!(close(s.summary(Stage::EndToEnd).max, 3_600_000.0));
    let b = s.batch_summary();
    assert_eq!((b.count, b.min, b.max), (4, 1.0, 32.0));
    assert_eq!(s.summary(Stage::PoolWait).count, 0);
    // The report leaves out empty stages.
    let stages: Vec<Stage> = s.report().stages.iter().map(|st| st.stage).collect();
    assert_eq!(stages, [Stage::Inference, Stage::Search, Stage::EndToEnd]);
}

#[test]
fn merge_reset_and_take() {
    let (a, b, both) = (Metrics::new(), Metrics::new(), Metrics::new());
    for i in 0..500u64 {
        let d = Duration::from_micros(i * i + 1);
        if i % 3 == 0 { &a } else { &b }.record(Stage::BatchWait, d);
        both.record(Stage::BatchWait, d);
        a.record_batch(i as usize % 7 + 1);
        both.record_batch(i as usize % 7 + 1);
    }
    let mut merged = Snapshot::default();
    merged.merge(&a.snapshot());
    merged.merge(&b.snapshot());
    assert_eq!(merged.report(), both.snapshot().report());
    assert_eq!(
        merged.hgrm(Stage::BatchWait),
        both.snapshot().hgrm(Stage::BatchWait)
    );

    let taken = a.take();
    assert_eq!(taken.summary(Stage::BatchWait).count, 167);
    assert_eq!(a.snapshot().summary(Stage::BatchWait).count, 0);
    assert_eq!(a.snapshot().batch_summary().count, 0);
    both.reset();
    assert_eq!(both.snapshot().report().stages, vec![]);
}

#[test]
fn threads_record_into_shared_histograms() {
    let m = Metrics::new();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let m = m.clone();
            s.spawn(move || {
                for i in 0..10_000 {
                    m.record(Stage::EndToEnd, Duration::from_micros(t * 10_000 + i + 1));
                }
            });
        }
    });
    let s = m.snapshot().summary(Stage::EndToEnd);
    assert_eq!(s.count, 40_000);
    assert!((s.max - 40.0).abs() < 0.05, "{s:?}");
}

#[test]
fn hgrm_is_the_percentile_distribution_format() {
    let m = Metrics::new();
    for i in 1..=1000 {
        m.record(Stage::EndToEnd, ms(i));
    }
    let text = m.snapshot().hgrm(Stage::EndToEnd);
    let lines: Vec<&str> = text.lines().collect();
    let head: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(head, ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]);
    assert_eq!(lines[1], "");
    let rows: Vec<Vec<f64>> = lines[2..]
        .iter()
        .take_while(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert!(rows.len() > 20);
    assert!(rows
        .windows(2)
        .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1] && w[0][2] <= w[1][2]));
    let last = rows.last().unwrap();
    assert_eq!((last[1], last[2]), (1.0, 1000.0));
    let median = rows.iter().find(|r| r[1] >= 0.5).unwrap();
    assert!((median[0] - 500.0).abs() < 1.0, "{median:?}");
    let footer: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("#[")).collect();
    assert_eq!(footer.len(), 3);
    assert!(footer[0].starts_with("#[Mean    =") && footer[0].contains("StdDeviation"));
    assert!(
        footer[1].contains("Total count    =         1000"),
        "{}",
        footer[1]
    );
    // Empty histograms still give a well-formed file.
    let empty = Metrics::new().snapshot().hgrm(Stage::Search);
    assert!(empty.contains("Total count    =            0"));
}

#[test]
fn table_lists_recorded_stages() {
    let m = Metrics::new();
    m.record(Stage::Prepare, ms(3));
    m.record_batch(8);
    let t = m.snapshot().table();
    let names: Vec<&str> = t
        .lines()
        .skip(1)
        .map(|l| l.split("  ").next().unwrap().trim())
        .collect();
    assert_eq!(names, ["prepare", "batch size"]);
    assert!(t.lines().next().unwrap().contains("p99.9"));
}

#[cfg(feature = "serde")]
#[test]
fn reports_serialise() {
    let m = Metrics::new();
    m.record(Stage::Inference, ms(10));
    let v = serde_json::to_value(m.snapshot().report()).unwrap();
    assert_eq!(v["stages"][0]["stage"], "inference");
    assert_eq!(v["stages"][0]["count"], 1);
    assert!((v["stages"][0]["p99"].as_f64().unwrap() - 10.0).abs() < 0.01);
    assert_eq!(v["batch"]["count"], 0);
}
