//! The on-disk spool: every report is sealed, written here, and deleted only when the server acks it.
//!
//! One file per report, `<seq>-<dropped>.env`, holding the sealed envelope (nothing readable sits on disk). A small
//! `state` file keeps the next sequence number and the count of reports dropped but not yet reported. When the spool
//! is over its bounds the oldest reports are deleted and counted; the count travels in the next report, so loss is
//! never silent. Sequence numbers never repeat, across restarts too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vigil_schema::envelope;
use vigil_schema::proto::AgentMsg;
use vigil_schema::secret::EnvelopeKeys;
use vigil_sys::fs::{private_dir, write_private};

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    /// Drops this report carries in its `dropped` field: if it is dropped itself, they must be counted again.
    carried: u64,
}

/// The spool directory and its index.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    max_reports: u64,
    entries: BTreeMap<u64, Entry>,
    bytes: u64,
    next_seq: u64,
    dropped_pending: u64,
    /// Drops since start, for the log.
    pub dropped_total: u64,
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".env")?;
    let (seq, dropped) = stem.split_once('-')?;
    Some((seq.parse().ok()?, dropped.parse().ok()?))
}

/// What [`Spool::rekey`] did with the spooled reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rekeyed {
    /// Sealed under the current keys for this agent: left as they were.
    pub kept: u64,
    /// Sealed under a previous secret (or for another agent id): re-sealed under the current keys, fresh seq.
    pub resealed: u64,
    /// Opened under no known key: deleted and counted as dropped.
    pub dropped: u64,
}

impl Spool {
    /// Opens (creating, 0700 on Unix; on Windows it inherits the agent directory's ACL) the spool directory and
    /// indexes what a previous run left.
    pub fn open(dir: &Path, max_bytes: u64, max_reports: u64) -> std::io::Result<Self> {
        private_dir(dir)?;
        let mut entries = BTreeMap::new();
        let mut bytes = 0;
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name();
            let Some((seq, carried)) = parse_name(&name.to_string_lossy()) else { continue };
            let size = item.metadata()?.len();
            bytes += size;
            entries.insert(seq, Entry { size, carried });
        }
        let (mut next_seq, dropped_pending) = match std::fs::read_to_string(dir.join("state")) {
            Ok(s) => {
                let mut it = s.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
                (it.next().unwrap_or(1), it.next().unwrap_or(0))
            }
            Err(_) => (1, 0),
        };
        if let Some((&last, _)) = entries.last_key_value() {
            next_seq = next_seq.max(last + 1);
        }
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes,
            max_reports,
            entries,
            bytes,
            next_seq: next_seq.max(1),
            dropped_pending,
            dropped_total: 0,
        })
    }

    fn save_state(&self) -> std::io::Result<()> {
        write_private(&self.dir.join("state"), format!("{} {}\n", self.next_seq, self.dropped_pending).as_bytes())
    }

    /// Reserves the next sequence number and takes the pending drop count for the report about to be made. Nothing
    /// is written until [`Spool::put`]: a crash in between leaves no gap that is neither spooled nor counted.
    pub fn next(&mut self) -> std::io::Result<(u64, u64)> {
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok((seq, std::mem::take(&mut self.dropped_pending)))
    }

    /// Stores a sealed report (file first, then the state, so a crash can only over-count drops, never lose a
    /// report), then enforces the bounds by dropping the oldest.
    pub fn put(&mut self, seq: u64, dropped: u64, sealed: &[u8]) -> std::io::Result<()> {
        if let Err(e) = write_private(&self.path(seq, dropped), sealed) {
            // Could not spool (disk full?): this report is lost, so it is counted like a drop.
            self.dropped_pending += 1 + dropped;
            let _ = self.save_state();
            return Err(e);
        }
        self.entries.insert(seq, Entry { size: sealed.len() as u64, carried: dropped });
        self.bytes += sealed.len() as u64;
        while self.entries.len() as u64 > self.max_reports || self.bytes > self.max_bytes {
            let Some((old, e)) = self.entries.pop_first() else { break };
            self.bytes -= e.size;
            let _ = std::fs::remove_file(self.path(old, e.carried));
            self.dropped_pending += 1 + e.carried;
            self.dropped_total += 1;
        }
        self.save_state()
    }

    fn path(&self, seq: u64, carried: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}-{carried}.env"))
    }

    /// Makes every spooled report deliverable under the current credentials, before any is sent: a report that
    /// opens under `keys` with this `agent_id` stays; one that opens under one of `previous` (or under `keys` with
    /// another agent id: the agent was renamed) is re-sealed under `keys` with a fresh sequence number, the new file
    /// written before the old one is removed so a crash loses nothing; one that opens under none is deleted and
    /// counted, so its loss travels in the next report like a drop of a full spool.
    pub fn rekey(
        &mut self,
        keys: &EnvelopeKeys,
        agent_id: &str,
        previous: &[EnvelopeKeys],
    ) -> std::io::Result<Rekeyed> {
        let mut done = Rekeyed::default();
        let seqs: Vec<u64> = self.entries.keys().copied().collect();
        for seq in seqs {
            let sealed = self.read(seq).unwrap_or_default();
            match envelope::open(keys, &sealed) {
                Ok(opened) if opened.agent_id == agent_id => {
                    done.kept += 1;
                    continue;
                }
                Ok(opened) => {
                    if self.reseal(seq, &opened.plaintext, keys, agent_id)? {
                        done.resealed += 1;
                        continue;
                    }
                }
                Err(_) => {
                    let opened = previous.iter().find_map(|k| envelope::open(k, &sealed).ok());
                    if let Some(opened) = opened
                        && self.reseal(seq, &opened.plaintext, keys, agent_id)?
                    {
                        done.resealed += 1;
                        continue;
                    }
                }
            }
            // Nothing can open it (or it holds no report): it can never be delivered.
            if let Some(e) = self.entries.get(&seq).copied() {
                self.remove(seq);
                self.dropped_pending += 1 + e.carried;
                self.dropped_total += 1;
                done.dropped += 1;
            }
        }
        self.save_state()?;
        Ok(done)
    }

    /// Re-seals the report in `plaintext` (spooled as `old`) under `keys` with the next sequence number, then
    /// deletes `old`. `false` if the plaintext is not a report.
    fn reseal(&mut self, old: u64, plaintext: &[u8], keys: &EnvelopeKeys, agent_id: &str) -> std::io::Result<bool> {
        let Ok(AgentMsg::Report(mut report)) = serde_json::from_slice::<AgentMsg>(plaintext) else { return Ok(false) };
        let Some(entry) = self.entries.get(&old).copied() else { return Ok(false) };
        let seq = self.next_seq;
        report.seq = seq;
        let json = serde_json::to_vec(&AgentMsg::Report(report)).map_err(std::io::Error::other)?;
        let sealed = envelope::seal(keys, agent_id, seq, &json).map_err(std::io::Error::other)?;
        self.next_seq += 1;
        // New file first, then the state (so the sequence number is never reused), then the old file.
        write_private(&self.path(seq, entry.carried), &sealed)?;
        self.entries.insert(seq, Entry { size: sealed.len() as u64, carried: entry.carried });
        self.bytes += sealed.len() as u64;
        self.save_state()?;
        self.remove(old);
        Ok(true)
    }

    /// Deletes an acknowledged (or permanently refused) report.
    pub fn remove(&mut self, seq: u64) {
        if let Some(e) = self.entries.remove(&seq) {
            self.bytes -= e.size;
            let _ = std::fs::remove_file(self.path(seq, e.carried));
        }
    }

    /// Reads a spooled report's sealed bytes.
    pub fn read(&self, seq: u64) -> Option<Vec<u8>> {
        let e = self.entries.get(&seq)?;
        std::fs::read(self.path(seq, e.carried)).ok()
    }

    /// Sequence numbers waiting for an ack, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.keys().copied()
    }

    /// How many reports wait.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The sequence number the next report will get.
    pub fn peek_next_seq(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_never_reuses_seq() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, 100).unwrap();
        for _ in 0..3 {
            let (seq, d) = s.next().unwrap();
            s.put(seq, d, b"sealed").unwrap();
        }
        s.remove(2);
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20, 100).unwrap();
        assert_eq!(s.pending().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(s.next().unwrap().0, 4);
        assert_eq!(s.read(3).unwrap(), b"sealed");
    }

    #[test]
    fn overflow_drops_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, 3).unwrap();
        for i in 1..=12u64 {
            let (seq, d) = s.next().unwrap();
            assert_eq!(seq, i);
            s.put(seq, d, b"x").unwrap();
            // Nothing is acked: every drop so far is either carried by a spooled report or still pending.
            let carried: u64 = s.entries.values().map(|e| e.carried).sum();
            assert_eq!(carried + s.dropped_pending, i.saturating_sub(3), "after {i} reports");
        }
        assert_eq!(s.pending().collect::<Vec<_>>(), vec![10, 11, 12]);
        // The count survives a restart.
        let before: u64 = s.entries.values().map(|e| e.carried).sum::<u64>() + s.dropped_pending;
        drop(s);
        let s = Spool::open(dir.path(), 1 << 20, 3).unwrap();
        assert_eq!(s.entries.values().map(|e| e.carried).sum::<u64>() + s.dropped_pending, before);
    }

    use vigil_schema::report::Report;
    use vigil_schema::secret::AgentSecret;

    fn keys(b: u8) -> EnvelopeKeys {
        AgentSecret::from_bytes([b; 32]).derive_keys()
    }

    /// Spools `n` reports sealed under `keys` for `agent_id`, each carrying `dropped` = its seq (to see it kept).
    fn spool_reports(s: &mut Spool, keys: &EnvelopeKeys, agent_id: &str, n: u64) {
        for _ in 0..n {
            let (seq, _) = s.next().unwrap();
            let mut r = Report::example(seq, 1_795_694_400_000 + seq as i64);
            r.dropped = seq;
            let json = serde_json::to_vec(&AgentMsg::Report(r)).unwrap();
            s.put(seq, 0, &envelope::seal(keys, agent_id, seq, &json).unwrap()).unwrap();
        }
    }

    /// Opens every spooled report under `keys`: (envelope seq, report seq, report time, agent id).
    fn open_all(s: &Spool, keys: &EnvelopeKeys) -> Vec<(u64, u64, i64, String)> {
        s.pending()
            .map(|seq| {
                let opened = envelope::open(keys, &s.read(seq).unwrap()).unwrap();
                let AgentMsg::Report(r) = serde_json::from_slice(&opened.plaintext).unwrap() else {
                    panic!("a report")
                };
                (opened.seq, r.seq, r.collected_at_ms, opened.agent_id)
            })
            .collect()
    }

    #[test]
    fn reports_under_a_previous_secret_are_resealed_with_fresh_increasing_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (keys(1), keys(2));
        let mut s = Spool::open(dir.path(), 1 << 20, 100).unwrap();
        spool_reports(&mut s, &old, "web-01", 3);
        spool_reports(&mut s, &new, "web-01", 1);
        drop(s);

        let mut s = Spool::open(dir.path(), 1 << 20, 100).unwrap();
        let done = s.rekey(&new, "web-01", &[keys(9), old.clone()]).unwrap();
        assert_eq!(done, Rekeyed { kept: 1, resealed: 3, dropped: 0 });
        let t = 1_795_694_400_000;
        assert_eq!(
            open_all(&s, &new),
            [
                (4, 4, t + 4, "web-01".to_owned()),
                (5, 5, t + 1, "web-01".to_owned()),
                (6, 6, t + 2, "web-01".to_owned()),
                (7, 7, t + 3, "web-01".to_owned()),
            ],
            "the report under the current key is untouched; the others keep their content under fresh seqs"
        );
        for seq in s.pending() {
            assert!(envelope::open(&old, &s.read(seq).unwrap()).is_err(), "nothing stays under the old key");
        }
        assert_eq!(s.next().unwrap(), (8, 0), "seqs are never reused and nothing was dropped");
        // Durable: the re-sealed files and the state survive a restart, and a second walk changes nothing.
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20, 100).unwrap();
        assert_eq!(s.rekey(&new, "web-01", &[old]).unwrap(), Rekeyed { kept: 4, resealed: 0, dropped: 0 });
        assert_eq!(s.pending().collect::<Vec<_>>(), [4, 5, 6, 7]);
        assert_eq!(s.next().unwrap().0, 8, "8 was reserved above but never spooled");
    }

    #[test]
    fn reports_for_another_agent_id_are_resealed_under_this_one() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(3);
        let mut s = Spool::open(dir.path(), 1 << 20, 100).unwrap();
        spool_reports(&mut s, &k, "old-name", 2);
        assert_eq!(s.rekey(&k, "new-name", &[]).unwrap(), Rekeyed { kept: 0, resealed: 2, dropped: 0 });
        let ids: Vec<_> = open_all(&s, &k).into_iter().map(|(seq, _, _, id)| (seq, id)).collect();
        assert_eq!(ids, [(3, "new-name".to_owned()), (4, "new-name".to_owned())]);
    }

    #[test]
    fn reports_no_key_opens_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (keys(4), keys(5));
        let mut s = Spool::open(dir.path(), 1 << 20, 100).unwrap();
        spool_reports(&mut s, &old, "web-01", 3);
        spool_reports(&mut s, &new, "web-01", 1);
        let done = s.rekey(&new, "web-01", &[]).unwrap();
        assert_eq!(done, Rekeyed { kept: 1, resealed: 0, dropped: 3 });
        assert_eq!(s.pending().collect::<Vec<_>>(), [4]);
        assert_eq!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "env"))
                .count(),
            1
        );
        // The loss travels in the next report, across a restart too.
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20, 100).unwrap();
        assert_eq!(s.next().unwrap(), (5, 3));
    }

    #[test]
    fn byte_bound_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 10, 100).unwrap();
        for _ in 0..4 {
            let (seq, d) = s.next().unwrap();
            s.put(seq, d, b"1234").unwrap();
        }
        assert_eq!(s.len(), 2);
    }
}
