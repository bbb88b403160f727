//! Scans a process's readable memory for a 32-byte pattern, via `/proc/PID/maps` and
//! `/proc/PID/mem`. The caller passes the pattern masked (each byte XORed with `mask`) so the
//! test's own copy never matches when it scans itself.

use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;

pub const PATTERN: usize = 32;

/// Counts places in the readable memory of `pid` ("self" or a number) holding the bytes whose
/// masked form is `masked`.
pub fn occurrences(pid: &str, masked: &[u8; PATTERN], mask: u8) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let mem = File::open(format!("/proc/{pid}/mem")).expect("open mem");
    let mut buf = vec![0u8; 1 << 20];
    let mut found = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let name = fields.nth(3).unwrap_or("");
        if !perms.starts_with('r') || name.starts_with("[v") {
            continue; // unreadable, or the kernel's vvar/vsyscall pages
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut at = start;
        while at < end {
            let len = buf.len().min((end - at) as usize);
            let Ok(n) = mem.read_at(&mut buf[..len], at) else {
                break; // a region the kernel will not let us read (guard pages)
            };
            if n == 0 {
                break;
            }
            found += count_masked(&buf[..n], masked, mask);
            // Overlap chunks so a match across a chunk boundary is still seen, once.
            at += if n > PATTERN && at + (n as u64) < end {
                (n - (PATTERN - 1)) as u64
            } else {
                n as u64
            };
        }
    }
    buf.fill(0);
    black_box(&buf);
    found
}

fn count_masked(hay: &[u8], masked: &[u8; PATTERN], mask: u8) -> usize {
    if hay.len() < PATTERN {
        return 0;
    }
    let first = masked[0] ^ mask;
    (0..=hay.len() - PATTERN)
        .filter(|&i| hay[i] == first && (1..PATTERN).all(|j| hay[i + j] ^ mask == masked[j]))
        .count()
}
