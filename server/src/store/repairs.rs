//! The `repairs` table of migration V11: the last automatic repair of each host (`crate::repair` decides; this
//! module only reads and writes rows, inside the caller's transaction like [`super::alerts`]).

use super::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{Store, StoreError, Tx};

/// How an automatic repair ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RepairOutcome {
    /// The bootstrap plan ran and a new report (or check-in) confirmed the agent.
    Repaired,
    /// The plan failed (host unreachable, login refused, no report in time, ...); retried after the backoff.
    Failed,
    /// Not attempted and not retried: the host presented a changed key (an alert for a person).
    Refused,
}

impl RepairOutcome {
    /// The `outcome` column's text.
    pub fn as_str(self) -> &'static str {
        match self {
            RepairOutcome::Repaired => "repaired",
            RepairOutcome::Failed => "failed",
            RepairOutcome::Refused => "refused",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "repaired" => Some(RepairOutcome::Repaired),
            "failed" => Some(RepairOutcome::Failed),
            "refused" => Some(RepairOutcome::Refused),
            _ => None,
        }
    }
}

/// The last repair of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepairRow {
    pub host: String,
    pub last_attempt_ms: i64,
    pub outcome: RepairOutcome,
    /// One line: what was done, or why it failed.
    pub detail: String,
    /// Failed attempts in a row (0 after a repair).
    pub failures: u32,
}

fn repair_row(r: &Row<'_>) -> Result<RepairRow, StoreError> {
    let outcome: String = r.get(2)?;
    let outcome =
        RepairOutcome::parse(&outcome).ok_or_else(|| StoreError::BadValue(format!("repair outcome {outcome}")))?;
    Ok(RepairRow {
        host: r.get(0)?,
        last_attempt_ms: r.get(1)?,
        outcome,
        detail: r.get(3)?,
        failures: u32::try_from(r.get::<i64>(4)?).unwrap_or(u32::MAX),
    })
}

/// The last repair of `host`, if it was ever repaired.
pub fn repair_of(conn: Tx<'_>, host: &str) -> Result<Option<RepairRow>, StoreError> {
    let stmt = conn.0.stmt("SELECT host, last_attempt_ms, outcome, detail, failures FROM repairs WHERE host = ?1")?;
    stmt.query_row(params![host], repair_row).optional()
}

/// Every host's last repair.
pub fn repairs(conn: Tx<'_>) -> Result<Vec<RepairRow>, StoreError> {
    let stmt = conn.0.stmt("SELECT host, last_attempt_ms, outcome, detail, failures FROM repairs ORDER BY host")?;
    let rows = stmt.query_map(params![], repair_row)?;
    Ok(rows)
}

/// Records `row` as the host's last repair.
pub fn set_repair(conn: Tx<'_>, row: &RepairRow) -> Result<(), StoreError> {
    let stmt = conn.0.stmt(
        "INSERT INTO repairs (host, last_attempt_ms, outcome, detail, failures) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (host) DO UPDATE SET last_attempt_ms = excluded.last_attempt_ms, outcome = excluded.outcome,
             detail = excluded.detail, failures = excluded.failures",
    )?;
    stmt.execute(params![row.host, row.last_attempt_ms, row.outcome.as_str(), row.detail, i64::from(row.failures)])?;
    Ok(())
}

impl Store {
    /// The last repair of `host` (for `vigil status`).
    pub fn repair_of(&self, host: &str) -> Result<Option<RepairRow>, StoreError> {
        repair_of(self.view(), host)
    }

    /// Every host's last repair.
    pub fn repairs(&self) -> Result<Vec<RepairRow>, StoreError> {
        repairs(self.view())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn the_last_repair_of_a_host_round_trips_and_is_replaced() {
        crate::store::each_engine(|s| {
            assert_eq!(s.repair_of("web").unwrap(), None);
            let failed = RepairRow {
                host: "web".into(),
                last_attempt_ms: 5,
                outcome: RepairOutcome::Failed,
                detail: "cannot reach".into(),
                failures: 2,
            };
            s.write_tx(|c| set_repair(c, &failed)).unwrap();
            assert_eq!(s.repair_of("web").unwrap(), Some(failed.clone()));
            let ok = RepairRow { last_attempt_ms: 9, outcome: RepairOutcome::Repaired, failures: 0, ..failed };
            s.write_tx(|c| set_repair(c, &ok)).unwrap();
            assert_eq!(s.repairs().unwrap(), [ok]);
        });
    }
}
