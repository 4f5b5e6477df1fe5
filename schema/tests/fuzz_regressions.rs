//! Regression tests for what fuzzing found (FUZZING.md, "Findings"): each input that once broke a property of the
//! contract crate, pinned so the behaviour cannot change unnoticed.

use vigil_schema::proto::AgentMsg;
use vigil_schema::report::{CpuStats, NetInterface, Report, Stats};

/// Finding 2 (target `proto`): serde_json reads some numbers too large for an `f32` as infinity instead of refusing
/// them, and writes infinity back as `null`, which no longer decodes. Such a report must never be stored: either it
/// does not decode, or `validate()` refuses it (every `f32` of a report is a percentage checked to be finite and
/// within 0..=100). The fuzzer's input decoded to an infinite core while serde's tag buffering read every number
/// as an `f64` first; since agent messages are decoded straight into their fields (`AgentMsg`'s `Deserialize`),
/// serde_json refuses its literal while decoding, wherever the tag is.
#[test]
fn an_f32_overflowing_to_infinity_is_refused_by_validation() {
    // The fuzzer's input, whitespace shortened: a real `vigil-agent --once --print` cpu report, one core mutated.
    let input = r#"{"type":"report","seq":1,"job":"once","collected_at_ms":17350835,"dropped":0,"stats":{"cpu":{
        "total_pct":97.368416,"per_core_pct":[222222222222222222222222222222222222222222222222222],
        "load1":6.01,"load5":5.94,"load15":4.3}}}"#;
    let tag_last = format!("{{{},\"type\":\"report\"}}", &input[r#"{"type":"report","#.len()..input.len() - 1]);
    for json in [input, tag_last.as_str()] {
        let err = serde_json::from_str::<AgentMsg>(json).expect_err("an overflowing f32 literal is refused");
        assert!(err.to_string().contains("number out of range"), "{json}: {err}");
    }
    // Read as an f64 and narrowed (what the buffered decoding did), the core is infinite, and validation refuses it.
    let core: f64 = 222222222222222222222222222222222222222222222222222.0;
    let mut report: Report =
        serde_json::from_str(r#"{"seq":1,"job":"once","collected_at_ms":1,"stats":{}}"#).expect("a report");
    report.stats.cpu =
        Some(CpuStats { total_pct: 97.4, per_core_pct: vec![core as f32], load1: 6.0, load5: 5.9, load15: 4.3 });
    assert!(report.stats.cpu.as_ref().expect("cpu").per_core_pct[0].is_infinite());
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
        // Refused either way: serde_json (with `float_roundtrip`) rejects some overflowing literals while decoding,
        // and reads others as infinity, which validation refuses.
        match serde_json::from_str::<Report>(&format!("{base}{stats}}}}}")) {
            Ok(report) => assert_eq!(report.validate().expect_err(field).field, field),
            Err(e) => assert!(e.to_string().contains("out of range"), "{field}: {e}"),
        }
    }
}

fn report_with(rate: f64, load: f64) -> Report {
    Report {
        seq: 1,
        job: "network".into(),
        collected_at_ms: 1_795_712_691_686,
        dropped: 0,
        stats: Stats {
            cpu: Some(CpuStats {
                total_pct: 12.5,
                per_core_pct: vec![10.0, 15.0],
                load1: load,
                load5: 0.5,
                load15: 0.25,
            }),
            network: Some(vec![NetInterface {
                name: "lo".into(),
                rx_bytes: 1_691_950_732,
                tx_bytes: 1_691_950_732,
                rx_packets: 1_298_390,
                tx_packets: 1_298_390,
                rx_errors: 0,
                tx_errors: 0,
                rx_dropped: 0,
                tx_dropped: 0,
                rx_bytes_per_s: Some(rate),
                tx_bytes_per_s: Some(9_302_573.952_934_347),
            }]),
            ..Stats::default()
        },
    }
}

/// Finding 1 (target `report`): serde_json's default float parsing is "best effort": a float that needs 17
/// significant digits, which serde_json itself writes for such values, came back a unit in the last place off. A rate
/// the agent measured was stored slightly different from what it sent, and a report did not survive its own encoding
/// (agent spool and wire). Fixed by serde_json's `float_roundtrip` feature.
#[test]
fn floats_with_17_significant_digits_survive_the_wire() {
    for text in ["93016099.42063919", "93016099.420639178", "0.30000000000000004", "1.7976931348623157e308"] {
        let value: f64 = text.parse().expect("a float");
        let parsed: f64 = serde_json::from_str(text).expect("serde_json parses a float");
        assert_eq!(parsed.to_bits(), value.to_bits(), "serde_json parsed {text} as {parsed:?}, not {value:?}");

        let msg = AgentMsg::Report(report_with(value, value.min(1e6)));
        let json = serde_json::to_vec(&msg).expect("encode");
        let back: AgentMsg = serde_json::from_slice(&json).expect("decode");
        assert_eq!(back, msg, "{}", String::from_utf8_lossy(&json));
    }
}

/// Finding 1, the fuzzer's own input (a real `vigil-agent --once --print` network report, one digit inserted).
#[test]
fn the_fuzzed_network_report_survives_re_encoding() {
    let input = r#"{"seq":1,"job":"once","collected_at_ms":1795713351884,"dropped":0,"stats":{"network":[
        {"name":"lo","rx_bytes":1691950732,"tx_bytes":1691950732,"rx_packets":1298390,"tx_packets":1298390,
        "rx_errors":0,"tx_errors":0,"rx_dropped":0,"tx_dropped":0,"rx_bytes_per_s":93016099.420639178,
        "tx_bytes_per_s":9302573.952934347}]}}"#;
    let report: Report = serde_json::from_str(input).expect("decode");
    report.validate().expect("valid");
    let back: Report = serde_json::from_slice(&serde_json::to_vec(&report).expect("encode")).expect("decode");
    assert_eq!(back, report);
}
