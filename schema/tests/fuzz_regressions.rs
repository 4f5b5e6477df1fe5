//! Regression tests for what fuzzing found (FUZZING.md, "Findings"): each input that once broke a property of the
//! contract crate, pinned so the behaviour cannot change unnoticed.

use vigil_schema::proto::AgentMsg;
use vigil_schema::report::Report;

/// Finding 2 (target `proto`): serde_json reads a number too large for an `f32` as infinity instead of refusing it,
/// and writes infinity back as `null`, which no longer decodes. Such a report decodes, so `validate()` is what keeps
/// it out: every `f32` of a report is a percentage checked to be finite and within 0..=100.
#[test]
fn an_f32_overflowing_to_infinity_is_refused_by_validation() {
    // The fuzzer's input, whitespace shortened: a real `vigil-agent --once --print` cpu report, one core mutated.
    let input = r#"{"type":"report","seq":1,"job":"once","collected_at_ms":17350835,"dropped":0,"stats":{"cpu":{
        "total_pct":97.368416,"per_core_pct":[222222222222222222222222222222222222222222222222222],
        "load1":6.01,"load5":5.94,"load15":4.3}}}"#;
    let AgentMsg::Report(report) = serde_json::from_str::<AgentMsg>(input).expect("serde_json accepts it") else {
        panic!("not a report");
    };
    let core = report.stats.cpu.as_ref().expect("cpu").per_core_pct[0];
    assert!(core.is_infinite(), "serde_json's reading changed: {core}");
    let err = report.validate().expect_err("an infinite percentage is refused");
    assert_eq!(err.field, "cpu.per_core_pct");

    // Each f32 field of a report, overflowing: all refused.
    let base = r#"{"seq":1,"job":"j","collected_at_ms":1,"stats":{"#;
    for (stats, field) in [
        (r#""cpu":{"total_pct":1e39,"per_core_pct":[],"load1":0,"load5":0,"load15":0}"#, "cpu.total_pct"),
        (r#""memory":{"total":2,"used":1,"available":1,"free":1,"used_pct":-1e39}"#, "memory.used_pct"),
        (r#""swap":{"total":2,"used":1,"free":1,"used_pct":1e39}"#, "swap.used_pct"),
        (
            r#""disk_usage":[{"mount_point":"/","total":2,"used":1,"free":1,"used_pct":1e39,"inodes_total":null,
                "inodes_used":null}]"#,
            "disk_usage.used_pct",
        ),
    ] {
        let report: Report = serde_json::from_str(&format!("{base}{stats}}}}}")).expect(field);
        assert_eq!(report.validate().expect_err(field).field, field);
    }
}
