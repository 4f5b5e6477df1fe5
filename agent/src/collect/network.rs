//! `network`: per-interface counters since boot (bytes, packets, errors, drops) and byte rates since the previous
//! sample.
//!
//! Counters come from sysinfo; drops, which sysinfo does not expose, from `/proc/net/dev` on Linux (0 elsewhere).
//! Rates are computed here from two samples and the time between them; [`NetworkCollector::new`] takes the first
//! sample, so even the first report has rates. An interface seen for the first time, or whose counters went
//! backwards (reset, wrapped), has no rate in that report.

use std::collections::HashMap;
use std::time::Instant;

use sysinfo::Networks;
use vigil_schema::report::{NetInterface, limits};

use super::clean_text;

/// Byte counters of one interface at one instant.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    rx: u64,
    tx: u64,
}

/// Keeps sysinfo's interface list and the previous sample.
#[derive(Debug)]
pub struct NetworkCollector {
    networks: Option<Networks>,
    prev: HashMap<String, Baseline>,
    prev_at: Instant,
}

/// Drop counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    pub rx: u64,
    pub tx: u64,
}

impl NetworkCollector {
    /// Lists the interfaces and records the baseline for the first rates.
    pub fn new() -> Self {
        let networks =
            Networks::new_with_refreshed_list().map_err(|e| tracing::warn!(error = %e, "no network list")).ok();
        let mut c = NetworkCollector { networks, prev: HashMap::new(), prev_at: Instant::now() };
        c.sample();
        c
    }

    /// Refreshes the counters and reports every interface, sorted by name.
    pub fn collect(&mut self) -> Vec<NetInterface> {
        let prev = std::mem::take(&mut self.prev);
        let prev_at = self.prev_at;
        let now_list = self.sample();
        let elapsed = self.prev_at.duration_since(prev_at).as_secs_f64();
        let drops = read_drops();
        now_list
            .into_iter()
            .map(|mut i| {
                if let Some(p) = prev.get(&i.name) {
                    i.rx_bytes_per_s = rate(p.rx, i.rx_bytes, elapsed);
                    i.tx_bytes_per_s = rate(p.tx, i.tx_bytes, elapsed);
                }
                let d = drops.get(&i.name).copied().unwrap_or_default();
                i.rx_dropped = d.rx;
                i.tx_dropped = d.tx;
                i.name = clean_text(&i.name);
                i
            })
            .collect()
    }

    /// Refreshes sysinfo, stores the new baseline and returns the counters (rates and drops not yet filled in).
    fn sample(&mut self) -> Vec<NetInterface> {
        let Some(networks) = self.networks.as_mut() else {
            self.prev_at = Instant::now();
            return Vec::new();
        };
        networks.refresh(true);
        self.prev_at = Instant::now();
        let mut list: Vec<NetInterface> = networks
            .iter()
            .map(|(name, d)| NetInterface {
                name: name.to_string_lossy().into_owned(),
                rx_bytes: d.total_received(),
                tx_bytes: d.total_transmitted(),
                rx_packets: d.total_packets_received(),
                tx_packets: d.total_packets_transmitted(),
                rx_errors: d.total_errors_on_received(),
                tx_errors: d.total_errors_on_transmitted(),
                rx_dropped: 0,
                tx_dropped: 0,
                rx_bytes_per_s: None,
                tx_bytes_per_s: None,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list.truncate(limits::MAX_ITEMS);
        self.prev = list.iter().map(|i| (i.name.clone(), Baseline { rx: i.rx_bytes, tx: i.tx_bytes })).collect();
        list
    }
}

impl Default for NetworkCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes per second between two counter readings; `None` if the counter went backwards or no time passed.
pub fn rate(before: u64, after: u64, elapsed_s: f64) -> Option<f64> {
    if after < before || !elapsed_s.is_finite() || elapsed_s <= 0.0 {
        return None;
    }
    let r = (after - before) as f64 / elapsed_s;
    r.is_finite().then_some(r)
}

/// Drop counters per interface from `/proc/net/dev` (empty off Linux or when unreadable).
fn read_drops() -> HashMap<String, Drops> {
    if !cfg!(target_os = "linux") {
        return HashMap::new();
    }
    std::fs::read_to_string("/proc/net/dev").map(|t| parse_proc_net_dev(&t)).unwrap_or_default()
}

/// Parses `/proc/net/dev`: two header lines, then `name: rx_bytes rx_packets rx_errs rx_drop ... (8 receive
/// fields) tx_bytes tx_packets tx_errs tx_drop ...`.
pub fn parse_proc_net_dev(text: &str) -> HashMap<String, Drops> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().ok()).collect::<Option<_>>()?;
            (f.len() >= 12).then(|| (name.trim().to_owned(), Drops { rx: f[3], tx: f[11] }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     789    0    0    0     0          0         0   123456     789    0    0    0     0       0          0
  eth0: 9999999   12345    2   17    0     0          0        10  5555555    6789    1    4    0     0       0          0
";

    #[test]
    fn proc_net_dev_drops() {
        let d = parse_proc_net_dev(PROC_NET_DEV);
        assert_eq!(d.len(), 2);
        assert_eq!(d["eth0"], Drops { rx: 17, tx: 4 });
        assert_eq!(d["lo"], Drops::default());
    }

    #[test]
    fn rates_need_forward_counters_and_time() {
        assert_eq!(rate(100, 300, 2.0), Some(100.0));
        assert_eq!(rate(300, 100, 2.0), None);
        assert_eq!(rate(1, 2, 0.0), None);
        assert_eq!(rate(1, 2, f64::NAN), None);
    }

    #[test]
    fn loopback_is_listed_with_rates_after_traffic() {
        let mut c = NetworkCollector::new();
        let first = c.collect();
        let lo = first.iter().find(|i| i.name == "lo").expect("lo is among the interfaces");
        assert!(lo.rx_bytes_per_s.is_some(), "the first collect already has a baseline");

        // Push 1 MiB through the loopback interface.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            std::io::copy(&mut s, &mut std::io::sink()).unwrap()
        });
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut s, &vec![7u8; 1 << 20]).unwrap();
        drop(s);
        assert_eq!(reader.join().unwrap(), 1 << 20);
        std::thread::sleep(std::time::Duration::from_millis(50));

        let second = c.collect();
        let lo2 = second.iter().find(|i| i.name == "lo").unwrap();
        assert!(lo2.rx_bytes >= lo.rx_bytes + (1 << 20), "{} -> {}", lo.rx_bytes, lo2.rx_bytes);
        let rx = lo2.rx_bytes_per_s.unwrap();
        let tx = lo2.tx_bytes_per_s.unwrap();
        assert!(rx > 0.0 && rx.is_finite() && tx > 0.0, "rx {rx} tx {tx}");
        assert!(lo2.rx_packets > lo.rx_packets);
    }
}
