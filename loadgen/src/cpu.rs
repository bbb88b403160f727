//! CPU time a process has used, from `/proc/PID/stat`: how the loadgen reports the server's
//! CPU seconds and ops per server CPU-second.
//!
//! Owns reading and parsing that file; it never signals or otherwise touches the process.

/// User plus system CPU seconds process `pid` has used (its threads included), or `None` if
/// it is gone or the file is not what Linux writes.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf reads a configuration value and touches no memory of ours.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_second <= 0 {
        return None;
    }
    cpu_seconds_of_stat(&stat, ticks_per_second as f64)
}

/// Parses a `/proc/PID/stat` line: utime and stime are fields 14 and 15, counted after the
/// command name, which may hold spaces and parentheses (so split at the last `)`).
pub fn cpu_seconds_of_stat(stat: &str, ticks_per_second: f64) -> Option<f64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_name_parses() {
        let stat = "4242 (redis server) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(cpu_seconds_of_stat(stat, 100.0), Some(3.0));
        assert_eq!(cpu_seconds_of_stat("garbage", 100.0), None);
    }

    #[test]
    fn own_process_has_used_some_cpu() {
        // Spin until the kernel has charged at least one clock tick (bounded at 5 s).
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let mut seconds = 0.0;
        while seconds == 0.0 && started.elapsed() < std::time::Duration::from_secs(5) {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            seconds = process_cpu_seconds(std::process::id()).unwrap();
        }
        assert!(seconds > 0.0);
        assert_eq!(process_cpu_seconds(u32::MAX), None);
    }
}
